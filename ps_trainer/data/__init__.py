"""Data sets, worker partitions and mini-batch streams."""

from .datasets import DATASETS, Batches, Dataset, Prepared, load_dataset, partition

__all__ = ["DATASETS", "Batches", "Dataset", "Prepared", "load_dataset", "partition"]
