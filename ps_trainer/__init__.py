"""ps-trainer: DistBelief-style asynchronous SGD on a sharded parameter server built from Ray actors."""

__version__ = "0.1.0"
