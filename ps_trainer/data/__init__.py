"""Data sets, worker partitions and mini-batch streams."""

from .datasets import DATASETS, Batches, Dataset, load_dataset, partition

__all__ = ["DATASETS", "Batches", "Dataset", "load_dataset", "partition"]
