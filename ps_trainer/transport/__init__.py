"""Transports: how a worker reaches a shard. Each offers `pull`, `push` and `results`."""

from .inprocess import InProcessClient

__all__ = ["InProcessClient"]
