"""ps-trainer: DistBelief-style asynchronous SGD on a sharded parameter server built from Ray actors."""

__version__ = "0.1.0"

import os as _os

# Ray reads this when it is *imported*, not at ray.init: set before anything here imports ray, so a
# local node binds its services to 127.0.0.1 only (DESIGN.md: a laptop run listens on loopback).
# It does not affect joining a cluster with --address.
_os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

