"""Passive outlier ejection (``outlier:``): servers that keep failing are taken out for a while.

Pure: fed results and a clock, it says which servers to eject and when each comes back; the
caller flips ``Backend.available`` and arms one timer per ejection (rare events, so a timer
each costs nothing on the hot path, which only adds to a counter).

Envoy's consecutive-errors rule: ``consecutive_errors`` failures in a row (5xx answers or
connect failures; a success resets the run) eject the server for ``base_ejection`` times
the number of times it has been ejected (growing: 30 s, 60 s, 90 s ...), capped at 10x.
Each time it comes back and serves a success the multiplier decays by one, so a server that
recovered is not punished for its past for ever. At most half of the servers (and never the
last available one) are out at once (Envoy's max_ejection_percent, at 50 %): ejecting
everything would turn a partial outage into a full one.
"""

from __future__ import annotations

from dataclasses import dataclass

from guard.config.model import OutlierConfig

MAX_MULTIPLIER = 10
MAX_EJECTED_FRACTION = 0.5


@dataclass(slots=True)
class _Record:
    failures: int = 0  # in a row
    ejections: int = 0  # the multiplier: grows per ejection, decays per clean return
    ejected_until: float | None = None
    total_ejections: int = 0


class OutlierDetector:
    def __init__(self, config: OutlierConfig, names: list[str]) -> None:
        self.config = config
        self._records = {name: _Record() for name in names}

    def ejected(self) -> list[str]:
        return [n for n, r in self._records.items() if r.ejected_until is not None]

    def total_ejections(self, name: str) -> int:
        return self._records[name].total_ejections

    def success(self, name: str) -> None:
        r = self._records.get(name)
        if r is None:
            return
        r.failures = 0
        if r.ejected_until is None and r.ejections > 0:
            r.ejections -= 1

    def failure(self, name: str, now: float, available: int) -> float | None:
        """Count a failure; returns the time the server comes back if this ejects it.

        ``available`` is how many of the service's servers take traffic now (health
        checks and earlier ejections excluded)."""
        r = self._records.get(name)
        if r is None or r.ejected_until is not None:
            return None
        r.failures += 1
        if r.failures < self.config.consecutive_errors:
            return None
        ejected = len(self.ejected())
        total = len(self._records)
        if available <= 1 or ejected + 1 > total * MAX_EJECTED_FRACTION:
            return None  # keep the last server / half the pool: a partial outage stays partial
        r.failures = 0
        r.ejections = min(r.ejections + 1, MAX_MULTIPLIER)
        r.total_ejections += 1
        r.ejected_until = now + self.config.base_ejection * r.ejections
        return r.ejected_until

    def restore(self, name: str, now: float) -> bool:
        """The ejection of ``name`` ends if its time has come; True when it did."""
        r = self._records.get(name)
        if r is None or r.ejected_until is None or now < r.ejected_until:
            return False
        r.ejected_until = None
        return True
