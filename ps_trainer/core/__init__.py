"""The transport-free core: flat layout, update rule, Polyak average, staleness policies, shard."""

from .layout import FlatModel, ParamLayout, ShardSpec
from .optim import NesterovMomentum
from .policy import (POLICIES, Async, BoundedStaleness, DelayCompensated, DropStale, Policy,
                     StalenessAwareLR, Synchronous, make_policy)
from .polyak import PolyakAverage
from .schedule import LRSchedule
from .shard import PushResult, ShardState

__all__ = ["Async", "BoundedStaleness", "DelayCompensated", "DropStale", "FlatModel", "LRSchedule",
           "NesterovMomentum", "POLICIES", "ParamLayout", "Policy", "PolyakAverage", "PushResult",
           "ShardSpec", "ShardState", "StalenessAwareLR", "Synchronous", "make_policy"]
