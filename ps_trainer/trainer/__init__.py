"""Builds a run: shards, workers, evaluation, the run directory. `train(cfg)` is the entry point.

`train` (from `run`) and `prepare` (from `plan`) are imported on first use: the light modules
here (metrics, checkpoint, lock, reaper) are read by reports and sweep processes that should not
pay for importing torch.
"""

__all__ = ["prepare", "train"]


def __getattr__(name: str):
    if name == "prepare":
        from .plan import prepare

        return prepare
    if name == "train":
        from .run import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
