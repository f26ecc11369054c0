"""The control plane's numbers for /metrics: instances, starts, stops, autoscaler, queues.

Label values are service names and fixed sets (phase, outcome, stop reason); never instance
ids or keys, which a per-key service has without bound. Containers made through the admin
API are each a service of their own (``ctr-ID``), as many as tenants create: they are
counted together under the one label ``CONTAINERS`` (as the data plane counts their
traffic under the one route ``_containers``); each one's numbers are in
``GET /v1/containers/{id}`` and the usage ledger.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

from guard.control.state import Instance, Phase
from guard.metrics.snapshot import Hist, Snapshot, add
from guard.proxy.context import Histogram
from guard.routing.containers import ROUTE_NAME

if TYPE_CHECKING:
    from guard.control.plane import ControlPlane

START_PHASES = ("create", "start", "probe")
# Instance.stop_reason values the controllers use; anything else counts as "exited".
STOP_REASONS = frozenset({"idle", "scale down", "shutdown", "config changed"})


# The service label of every API container: the name of their one data-plane route.
CONTAINERS = ROUTE_NAME


class ControlStats:
    """Counters the controllers feed as things happen. ``label`` maps a service name to
    its label value (API containers' to ``CONTAINERS``)."""

    def __init__(self, label: Callable[[str], str] = str) -> None:
        self.label = label
        self.wake_duration: dict[tuple[str, str], Histogram] = defaultdict(Histogram)
        self.start_phase: dict[tuple[str, str], Histogram] = defaultdict(Histogram)
        self.stops: dict[tuple[str, str], int] = defaultdict(int)
        # From the usage meter's readings (only when it runs: usage: or target_cpu).
        self.cpu_seconds: dict[str, float] = defaultdict(float)
        self.memory: dict[str, dict[str, int]] = defaultdict(dict)  # service -> inst -> bytes

    def observe_usage(self, service: str, instance: str, cpu: float, memory: int) -> None:
        label = self.label(service)
        self.cpu_seconds[label] += cpu
        self.memory[label][instance] = memory

    def observe_start(self, service: str, outcome: str, phases: dict[str, float]) -> None:
        label = self.label(service)
        self.wake_duration[(label, outcome)].observe(phases["total"])
        if outcome == "ready":
            for phase in START_PHASES:
                self.start_phase[(label, phase)].observe(phases[phase])

    def stopped(self, inst: Instance) -> None:
        label = self.label(inst.service)
        reason = inst.stop_reason if inst.stop_reason in STOP_REASONS else "exited"
        self.stops[(label, reason or "exited")] += 1
        self.memory[label].pop(inst.id, None)


def control_snapshot(plane: ControlPlane) -> Snapshot:
    snap: Snapshot = {}
    stats = plane.stats
    for labels, h in list(stats.wake_duration.items()):
        add(snap, "guard_instance_start_duration_seconds", labels, Hist(list(h.counts), h.sum))
    for labels, h in list(stats.start_phase.items()):
        add(snap, "guard_instance_start_phase_seconds", labels, Hist(list(h.counts), h.sum))
    for labels, n in list(stats.stops.items()):
        add(snap, "guard_instance_stops_total", labels, n)
    for service, seconds in list(stats.cpu_seconds.items()):
        add(snap, "guard_instance_cpu_seconds_total", (service,), seconds)
    for service, per_instance in list(stats.memory.items()):
        add(snap, "guard_instance_memory_bytes", (service,), sum(per_instance.values()))
    for name, driver in list(plane.drivers.items()):
        add(snap, "guard_driver_up", (name,), 1 if driver.up else 0)
        add(snap, "guard_driver_outages_total", (name,), driver.outages)
    for name, checker in list(plane.health.items()):
        for server in checker.servers:
            add(snap, "guard_backend_up", (name, server.name), 1 if server.up else 0)
            for result, n in server.checks.items():
                add(snap, "guard_health_checks_total", (name, result), n)
    # Summed per label: every API container's instances and load under CONTAINERS.
    instances: dict[tuple[str, str], int] = defaultdict(int)
    held: dict[str, int] = defaultdict(int)
    in_flight: dict[str, int] = defaultdict(int)
    for name, ctl in list(plane.controllers.items()):
        label = stats.label(name)
        counts = dict.fromkeys(Phase, 0)
        for inst in ctl.instances():
            counts[inst.phase] += 1
        for phase, n in counts.items():
            if phase is not Phase.STOPPED:
                instances[(label, phase.value)] += n
        load = plane.peek_load(name)
        held[label] += load.held
        in_flight[label] += sum(load.in_flight.values())
        decision = ctl.last_decision
        if decision is not None and label == name:  # pooled services only decide
            add(snap, "guard_autoscaler_desired_instances", (name,), decision.desired)
            add(snap, "guard_autoscaler_panic", (name,), 1 if decision.panicking else 0)
            add(snap, "guard_autoscaler_stable_concurrency", (name,), decision.stable_concurrency)
    for labels, n in instances.items():
        add(snap, "guard_instances", labels, n)
    for label, n in held.items():
        add(snap, "guard_wake_queue_depth", (label,), n)
    for label, n in in_flight.items():
        add(snap, "guard_service_in_flight", (label,), n)
    return snap
