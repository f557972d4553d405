"""Builds a run: shards, workers, evaluation, the run directory. `train(cfg)` is the entry point."""

from .run import prepare, train

__all__ = ["prepare", "train"]
