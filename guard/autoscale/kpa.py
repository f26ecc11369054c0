"""The autoscaler: a pure, deterministic, Knative-KPA-style function of (samples, config, now).

``decide()`` reads the observed concurrency (and optionally CPU) of one service, the
``ScaleConfig``, the number of ready instances and the state the previous call returned, and
returns a ``Decision`` plus the next ``KpaState``. It takes no clock, does no IO and mutates
nothing it is given, so it can be tested exhaustively with a fake clock and the control plane
only has to call it on a timer (Knative ticks every 2 s) and act on ``Decision.desired``.

The rules, in the order they apply (references are Knative's ``autoscaler.go``):

1. Estimates. ``stable`` = average concurrency over ``stable_window``; ``panic`` = average
   over ``panic_window``. ``desired_stable = ceil(stable / target)`` and
   ``desired_panic = ceil(panic / target)`` with ``target = target_concurrency *
   target_utilization``. With ``target_cpu``, ``desired_cpu = ceil(ready * cpu / target_cpu)``
   (``cpu`` = stable-window average utilisation as a fraction of the instances' CPU limit)
   and the stable estimate is the larger of the two signals. While the service is awake
   (activity - any sample > 0 - within ``sleep_after``, or instances up for less than
   ``sleep_after`` since the first decision) the estimate is at least 1, whatever the
   averages say: a request every 90 s must not be answered by a cold start each time.
2. Bounded steps. An estimate may at most halve the ready count per decision
   (``ceil(ready / max_scale_down_rate)``) and at most multiply it by
   ``max_scale_up_rate`` (of ``max(1, ready)``), so one bad sample can't wipe out capacity.
3. Panic. When the panic-window average is >= ``panic_threshold`` (2x) times the ready
   capacity (``max(1, ready) * target``, the ``max`` so a service at zero can panic), the
   service panics: the panic estimate is used when larger, the count never drops (not
   below ``ready`` nor below the highest count chosen since panic began). Panic ends once a
   whole ``stable_window`` has passed without the panic condition.
4. ``scale_down_delay``: the result is the maximum of the decisions made within the last
   ``scale_down_delay``, so a dip must last that long before capacity goes away; scale-up
   is never delayed.
5. Clamp to ``[min, max]``.
6. Sleep (checked first; it overrides all of the above). With ``min == 0`` and no activity
   for ``sleep_after``, the answer is 0, directly: sleep bypasses the halving bound and the
   delay because ``sleep_after`` already is the user's "idle this long, then stop", and
   holding instances another ``scale_down_delay`` would break that promise. Scale to zero
   happens through this rule only: halving rounds up (1 stays 1), and the floor of rule 1
   keeps 1 while the service is awake.

Choice: ``target_utilization`` defaults to 1.0, not Knative's 0.7. Knative's target is a
capacity ("100 per pod") and 0.7 keeps headroom below it; our ``target_concurrency`` is
documented as the target itself, and the hard per-instance limit is the separate
``max_concurrency``. Set 0.7 to get Knative's behaviour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from guard.config.model import ScaleConfig

# Averages are sums of floats: 30 / 10 may come out as 3.0000000000000004, and the ceiling of
# that would ask for a 4th instance. Treat anything this close to an integer as that integer.
_EPSILON = 1e-9


def _ceil(x: float) -> int:
    return max(0, math.ceil(x - _EPSILON))


# ------------------------------------------------------------------------ sample window


class SampleWindow:
    """A bounded ring of ``(t, value)`` samples bucketed by time, with window averages.

    Pure: it is handed timestamps, never reads a clock. Memory is ``horizon / granularity``
    buckets whatever the sample rate. Samples in the same bucket are averaged (a sample is
    a level - the average in-flight count over the reporting interval - not a count of
    events, so two reports in one second must not add up). A window's average is taken over
    the buckets in it that hold samples: empty buckets are not counted as zero, so a
    reporter ticking slower than ``granularity`` does not dilute the average. The reporter
    must therefore report zeros explicitly when idle (the control plane samples every tick).

    The time of the latest non-zero sample is kept separately and forever, because idleness
    (``sleep_after``, minutes) is judged over a far longer span than the averages need.
    """

    __slots__ = ("_buckets", "_capacity", "_first_at", "_granularity", "_last_active_at")

    def __init__(self, horizon: float, granularity: float = 1.0) -> None:
        if granularity <= 0:
            raise ValueError("granularity must be positive")
        if horizon < granularity:
            horizon = granularity
        self._granularity = granularity
        self._capacity = _ceil(horizon / granularity) + 1
        # slot -> [bucket index, sum, count]; a slot holding an older index is stale.
        self._buckets: list[list[float] | None] = [None] * self._capacity
        self._first_at: float | None = None
        self._last_active_at: float | None = None

    @classmethod
    def for_scale(cls, config: ScaleConfig, granularity: float = 1.0) -> SampleWindow:
        """A window long enough for ``config.stable_window``."""
        return cls(config.stable_window, granularity)

    @property
    def horizon(self) -> float:
        return (self._capacity - 1) * self._granularity

    @property
    def first_at(self) -> float | None:
        """Time of the earliest sample ever added (kept after it leaves the ring)."""
        return self._first_at

    @property
    def last_active_at(self) -> float | None:
        """Time of the latest sample with a value above zero, or None if there never was one."""
        return self._last_active_at

    def add(self, t: float, value: float) -> None:
        if value < 0 or math.isnan(value):
            raise ValueError(f"sample value must be >= 0, got {value}")
        index = math.floor(t / self._granularity)
        slot = index % self._capacity
        bucket = self._buckets[slot]
        if bucket is None or bucket[0] < index:
            self._buckets[slot] = [index, value, 1]
        elif bucket[0] == index:
            bucket[1] += value
            bucket[2] += 1
        # else: older than everything the ring still holds; dropped.
        if self._first_at is None or t < self._first_at:
            self._first_at = t
        if value > 0 and (self._last_active_at is None or t > self._last_active_at):
            self._last_active_at = t

    def average(self, now: float, window: float) -> float:
        """Average over the buckets of ``(now - window, now]`` that hold samples; 0 if none.

        ``window`` is capped at the ring's horizon. Samples stamped after ``now`` are
        ignored, so a decision at ``now`` depends only on what was known by then."""
        end = math.floor(now / self._granularity)
        count = min(self._capacity, max(1, _ceil(window / self._granularity)))
        total = 0.0
        buckets = 0
        for index in range(end - count + 1, end + 1):
            bucket = self._buckets[index % self._capacity]
            if bucket is not None and bucket[0] == index:
                total += bucket[1] / bucket[2]
                buckets += 1
        return total / buckets if buckets else 0.0


# ------------------------------------------------------------------------ the decision


@dataclass(frozen=True, slots=True)
class KpaParams:
    """Tunables that are not part of the config contract (Knative's defaults unless noted)."""

    target_utilization: float = 1.0  # Knative: 0.7; see the module docstring
    panic_threshold: float = 2.0  # panic when demand >= 2x ready capacity
    max_scale_up_rate: float = 1000.0  # at most 1000x max(1, ready) per decision
    max_scale_down_rate: float = 2.0  # at most halve per decision


@dataclass(frozen=True, slots=True)
class KpaState:
    """What one decision hands to the next. Start from ``KpaState()``."""

    observed_since: float | None = None  # time of the first decision: idleness starts here
    panicking_since: float | None = None  # None = not panicking
    panic_seen_at: float | None = None  # last time the panic condition held
    panic_max: int = 0  # highest count chosen during this panic: never scaled below
    last_scale_up_at: float | None = None  # informational (status, metrics)
    # (t, desired) decisions within scale_down_delay, kept as a decreasing run: an entry
    # with a later, larger-or-equal one can never be the max again, so it is dropped.
    # Bounded by the number of decisions in the delay window.
    delay_record: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int
    panicking: bool
    reason: str
    stable_concurrency: float
    panic_concurrency: float
    cpu_utilization: float | None  # stable-window average, None without target_cpu / samples
    desired_stable: int  # ceil(stable / target), before bounds
    desired_panic: int  # ceil(panic / target), before bounds
    desired_cpu: int | None  # ceil(ready * cpu / target_cpu), before bounds
    ready: int


def decide(
    config: ScaleConfig,
    concurrency: SampleWindow,
    *,
    ready: int,
    state: KpaState,
    now: float,
    cpu: SampleWindow | None = None,
    params: KpaParams = KpaParams(),  # frozen: one shared default is safe
) -> tuple[Decision, KpaState]:
    """One autoscaler tick for one service. See the module docstring for the rules."""
    if ready < 0:
        raise ValueError("ready must be >= 0")
    observed_since = state.observed_since if state.observed_since is not None else now
    target = config.target_concurrency * params.target_utilization

    stable = concurrency.average(now, config.stable_window)
    panic = concurrency.average(now, config.panic_window)
    desired_stable = _ceil(stable / target)
    desired_panic = _ceil(panic / target)

    cpu_util: float | None = None
    desired_cpu: int | None = None
    if config.target_cpu is not None and cpu is not None and cpu.first_at is not None:
        cpu_util = cpu.average(now, config.stable_window)
        desired_cpu = _ceil(ready * cpu_util / config.target_cpu)

    def decision(desired: int, panicking: bool, reason: str) -> Decision:
        return Decision(
            desired=desired,
            panicking=panicking,
            reason=reason,
            stable_concurrency=stable,
            panic_concurrency=panic,
            cpu_utilization=cpu_util,
            desired_stable=desired_stable,
            desired_panic=desired_panic,
            desired_cpu=desired_cpu,
            ready=ready,
        )

    # Idleness: active = a sample > 0 within sleep_after. Instances that are up but have never
    # seen traffic get sleep_after from the first decision before they are stopped.
    last_active = concurrency.last_active_at
    recently_active = last_active is not None and now - last_active < config.sleep_after
    idle_anchor = observed_since if last_active is None else max(last_active, observed_since)
    awake = recently_active or (ready > 0 and now - idle_anchor < config.sleep_after)

    if config.min == 0 and not awake:
        idle_for = now - idle_anchor
        reason = (
            f"sleep: no activity for {idle_for:.0f}s (sleep_after {config.sleep_after:.0f}s)"
            if ready
            else "idle: no activity"
        )
        return decision(0, False, reason), KpaState(
            observed_since=observed_since,
            last_scale_up_at=state.last_scale_up_at,
            delay_record=((now, 0),) if config.scale_down_delay > 0 else (),
        )

    ready_floor = max(1, ready)
    max_up = max(1, _ceil(params.max_scale_up_rate * ready_floor))
    max_down = _ceil(ready / params.max_scale_down_rate)

    def bounded(n: int) -> int:
        return min(max(n, max_down), max_up)

    reasons: list[str] = []
    want_stable = desired_stable
    if desired_cpu is not None and desired_cpu > desired_stable:
        want_stable = desired_cpu
        reasons.append(
            f"cpu {cpu_util:.0%} of limit x {ready} ready / target {config.target_cpu:.0%}"
            f" -> {desired_cpu}"
        )
    else:
        reasons.append(f"concurrency {stable:.2f} / target {target:g} -> {desired_stable}")

    if want_stable < 1:  # we are awake: traffic within sleep_after, or not yet idle that long
        want_stable = 1
        reasons.append("1 kept until idle for sleep_after")

    # Panic: entered (or extended) whenever the condition holds; left a stable_window
    # after it last held.
    over = panic >= params.panic_threshold * ready_floor * target
    panicking_since = state.panicking_since
    panic_seen_at = state.panic_seen_at
    panic_max = state.panic_max
    if over:
        panicking_since = panicking_since if panicking_since is not None else now
        panic_seen_at = now
    elif (
        panicking_since is not None
        and panic_seen_at is not None
        and now - panic_seen_at >= config.stable_window
    ):
        panicking_since = panic_seen_at = None
        panic_max = 0
        reasons.append("panic over")
    panicking = panicking_since is not None

    if panicking:
        want = max(bounded(want_stable), bounded(desired_panic), panic_max, ready)
        panic_max = want
        reasons[0] = (
            f"panic: concurrency {panic:.2f} over {config.panic_window:g}s"
            f" vs capacity {ready * target:g} -> {want}, no scale-down"
        )
    else:
        want = bounded(want_stable)
        if want > want_stable:
            reasons.append(f"scale-down bounded to {want}")
        elif want < want_stable:
            reasons.append(f"scale-up bounded to {want}")

    # scale_down_delay: hold the max of the decisions within the delay window.
    record: tuple[tuple[float, int], ...] = ()
    desired = want
    if config.scale_down_delay > 0:
        horizon = now - config.scale_down_delay
        kept = [(t, n) for t, n in state.delay_record if t > horizon and t <= now and n > want]
        record = (*kept, (now, want))
        desired = max(n for _, n in record)
        if desired > want:
            reasons.append(f"held at {desired} by scale_down_delay")

    clamped = min(max(desired, config.min), config.max)
    if clamped != desired:
        reasons.append(f"clamped to {'min' if clamped > desired else 'max'} {clamped}")
    desired = clamped

    next_state = replace(
        state,
        observed_since=observed_since,
        panicking_since=panicking_since,
        panic_seen_at=panic_seen_at,
        panic_max=panic_max,
        last_scale_up_at=now if desired > ready else state.last_scale_up_at,
        delay_record=record,
    )
    return decision(desired, panicking, "; ".join(reasons)), next_state


__all__ = ["Decision", "KpaParams", "KpaState", "SampleWindow", "decide"]
