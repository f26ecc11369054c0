"""Backend selection: a pure core (no IO) shared by every proxy worker."""

from guard.balancing.backend import Backend
from guard.balancing.balancers import (
    BALANCE_NAMES,
    Balancer,
    ConsistentHash,
    LeastRequest,
    PowerOfTwoChoices,
    RoundRobin,
    key_extractor,
    make_balancer,
)
from guard.balancing.ring import HashRing, hash64

__all__ = [
    "BALANCE_NAMES",
    "Backend",
    "Balancer",
    "ConsistentHash",
    "HashRing",
    "LeastRequest",
    "PowerOfTwoChoices",
    "RoundRobin",
    "hash64",
    "key_extractor",
    "make_balancer",
]
