"""Which containers a restarted Guard takes over from the one before it (pure, no IO).

A Guard that was SIGKILLed, crashed, or handed over to a new binary leaves its docker
instances running. The next Guard with the same ``guard_id`` adopts the running ones that
still fit its route files, so the traffic they serve does not pay a second cold start and
no second container is started next to them:

- the service still exists, is a docker container service, and its spec (image, command,
  env, resources, probe, network: ``spec_digest``) is the one the container was made from;
- its shape still fits: a per-key service takes containers that have a key (one per key),
  a pooled one takes containers without one, at most ``scale.max``.

Everything else of this Guard's id (mismatching, stopped, unlabelled) is removed as
before (``DockerDriver.reap_orphans``). An adopted container is probed for readiness like
a new one before it is published; one that does not pass is stopped and removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from guard.config.model import ContainerSpec, ScaleConfig, ServiceConfig
from guard.drivers.docker import Leftover


def adoptable(
    leftovers: Iterable[Leftover],
    services: Mapping[str, ServiceConfig],
    digest: Callable[[ContainerSpec], str],
) -> dict[str, list[Leftover]]:
    """service -> the leftovers it adopts, oldest first (the oldest have warm caches)."""
    out: dict[str, list[Leftover]] = {}
    keys: set[tuple[str, str]] = set()
    for left in sorted(leftovers, key=lambda lo: lo.created_wall):
        cfg = services.get(left.service)
        spec = cfg.container if cfg is not None else None
        if cfg is None or spec is None or spec.driver != "docker" or digest(spec) != left.spec:
            continue
        if cfg.per_key != (left.key is not None):
            continue
        if left.key is not None:
            if (left.service, left.key) in keys:
                continue
            keys.add((left.service, left.key))
        taken = out.setdefault(left.service, [])
        if len(taken) >= (cfg.scale or ScaleConfig()).max:
            continue
        taken.append(left)
    return {service: found for service, found in out.items() if found}
