"""The KPA-style autoscaler, driven by a fake clock: no sleeps, no threads, no IO."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guard.autoscale import Decision, KpaParams, KpaState, SampleWindow, decide
from guard.config.model import ScaleConfig

Load = Callable[[float], float]


def const(value: float) -> Load:
    return lambda _t: value


def config(**overrides: object) -> ScaleConfig:
    base: dict[str, object] = {
        "min": 0,
        "max": 100,
        "target_concurrency": 10,
        "stable_window": 60.0,
        "panic_window": 6.0,
        "scale_down_delay": 30.0,
        "sleep_after": 300.0,
    }
    base.update(overrides)
    return ScaleConfig(**base)  # type: ignore[arg-type]


@dataclass
class Sim:
    """A service under a fake clock: one concurrency (and CPU) sample per second, a decision
    every ``tick`` seconds, and instances that become ready the moment they are asked for
    (``follow``) - the autoscaler's view of a perfectly fast driver."""

    config: ScaleConfig
    ready: int = 0
    params: KpaParams = field(default_factory=KpaParams)
    follow: bool = True
    tick: float = 2.0
    now: float = 0.0
    state: KpaState = field(default_factory=KpaState)
    log: list[tuple[float, Decision]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.window = SampleWindow.for_scale(self.config)
        self.cpu = SampleWindow.for_scale(self.config)

    def run(self, seconds: float, load: Load, cpu: Load | None = None) -> list[Decision]:
        out: list[Decision] = []
        end = self.now + seconds
        while self.now < end:
            self.now += 1.0
            self.window.add(self.now, load(self.now))
            if cpu is not None:
                self.cpu.add(self.now, cpu(self.now))
            if self.now % self.tick == 0:
                out.append(self.decide())
        return out

    def decide(self) -> Decision:
        d, self.state = decide(
            self.config,
            self.window,
            ready=self.ready,
            state=self.state,
            now=self.now,
            cpu=self.cpu,
            params=self.params,
        )
        self.log.append((self.now, d))
        if self.follow:
            self.ready = d.desired
        return d

    def at(self, t: float) -> Decision:
        return next(d for when, d in self.log if when == t)


# ------------------------------------------------------------------------ SampleWindow


def test_window_average_only_counts_buckets_with_samples() -> None:
    w = SampleWindow(60.0)
    for t in (1.0, 3.0, 5.0):  # a reporter ticking every 2 s: no dilution by empty buckets
        w.add(t, 30.0)
    assert w.average(5.0, 60.0) == pytest.approx(30.0)
    assert w.average(5.0, 1.0) == pytest.approx(30.0)
    assert w.average(4.0, 1.0) == 0.0  # bucket 4 is empty


def test_window_samples_in_one_bucket_are_averaged_as_levels() -> None:
    w = SampleWindow(10.0)
    w.add(1.1, 10.0)
    w.add(1.6, 20.0)
    w.add(2.0, 60.0)
    assert w.average(2.0, 2.0) == pytest.approx((15.0 + 60.0) / 2)


def test_window_ignores_future_samples_and_old_buckets() -> None:
    w = SampleWindow(10.0)
    w.add(5.0, 100.0)
    w.add(20.0, 1.0)
    assert w.average(10.0, 10.0) == pytest.approx(100.0)
    assert w.average(20.0, 10.0) == pytest.approx(1.0)  # t=5 is outside (10, 20]


def test_window_memory_is_bounded_and_overwrites_oldest() -> None:
    w = SampleWindow(5.0)
    for t in range(1, 10_001):
        w.add(float(t), float(t))
    assert len(w._buckets) == 6
    assert w.average(10_000.0, 5.0) == pytest.approx(sum(range(9_996, 10_001)) / 5)
    # The window is capped at the horizon: asking for more can't read evicted buckets.
    assert w.average(10_000.0, 1_000.0) == pytest.approx(sum(range(9_995, 10_001)) / 6)
    w.add(1.0, 1e9)  # far older than the ring: dropped, not mixed into a live bucket
    assert w.average(10_000.0, 5.0) == pytest.approx(sum(range(9_996, 10_001)) / 5)
    assert w.first_at == 1.0


def test_window_tracks_last_activity_beyond_its_horizon() -> None:
    w = SampleWindow(5.0)
    assert w.last_active_at is None
    w.add(1.0, 0.0)
    assert w.last_active_at is None
    w.add(2.0, 0.5)
    for t in range(3, 100):
        w.add(float(t), 0.0)
    assert w.last_active_at == 2.0
    with pytest.raises(ValueError):
        w.add(100.0, -1.0)


# ------------------------------------------------------------------------ steady state


def test_steady_load_at_three_times_target_gives_three() -> None:
    sim = Sim(config())
    decisions = sim.run(180, const(30.0))
    assert {d.desired for d in decisions} == {3}
    # Cold start from zero at 3x capacity(1) panics; a calm stable window later it is over.
    assert decisions[0].panicking
    assert not decisions[-1].panicking
    assert decisions[-1].stable_concurrency == pytest.approx(30.0)
    assert decisions[-1].reason.startswith("concurrency 30.00 / target 10 -> 3")


def test_target_utilization_knative_style() -> None:
    sim = Sim(config(), params=KpaParams(target_utilization=0.7))
    assert sim.run(120, const(30.0))[-1].desired == 5  # ceil(30 / 7)


def test_ramp_up_is_monotonic_and_reaches_the_target_count() -> None:
    sim = Sim(config())
    decisions = sim.run(100, lambda t: t)  # 1 more in flight every second, up to 100
    decisions += sim.run(120, const(100.0))
    counts = [d.desired for d in decisions]
    assert counts == sorted(counts)
    assert counts[-1] == 10
    assert max(counts) == 10


# ------------------------------------------------------------------------ panic


def test_spike_panics_scales_up_fast_holds_then_exits_after_a_stable_window() -> None:
    sim = Sim(config())
    sim.run(120, const(10.0))
    assert sim.ready == 1 and not sim.state.panicking_since

    sim.run(20, const(50.0))  # t = 121..140
    assert sim.at(122).panicking
    assert sim.at(122).desired == 3
    assert sim.at(126).desired == 5  # six seconds in: the panic window already sees it all
    assert sim.at(126).desired_stable < 5  # the stable window alone would still lag
    assert sim.at(126).reason.startswith("panic:")

    sim.run(80, const(10.0))  # back to normal at t = 141
    # The panic condition last held at t=122 (50 >= 2 x 1 x 10); no scale-down until a
    # whole stable window later, although demand is back to one instance's worth.
    for t in range(142, 182, 2):
        assert sim.at(t).panicking and sim.at(t).desired == 5, t
    exit_decision = sim.at(182)
    assert not exit_decision.panicking
    assert "panic over" in exit_decision.reason
    # ... and scale_down_delay then holds the panic-time count for 30 s more.
    assert all(sim.at(t).desired == 5 for t in range(182, 210, 2))
    assert sim.at(210).desired < 5
    sim.run(200, const(10.0))
    assert sim.ready == 1


def test_no_scale_down_while_panicking_even_if_ready_exceeds_demand() -> None:
    cfg = config()
    sim = Sim(cfg, ready=1, follow=False)
    sim.run(6, const(40.0))
    assert sim.log[-1][1].panicking
    sim.ready = 8  # more instances than any estimate asks for (e.g. a manual start)
    for d in sim.run(30, const(0.5)):
        assert d.panicking and d.desired >= 8


def test_panic_uses_the_larger_of_panic_and_stable_estimates() -> None:
    sim = Sim(config(), follow=False, ready=2)
    sim.run(60, const(100.0))  # stable 100 -> 10 (halving/scale-up bounds allow it)
    sim.run(4, const(0.0))
    d = sim.log[-1][1]
    assert d.panicking
    assert d.desired_panic < d.desired_stable
    assert d.desired >= d.desired_stable


# ------------------------------------------------------------------------ scale down


def test_scale_down_delay_holds_the_max_of_recent_decisions() -> None:
    sim = Sim(config(stable_window=10.0, panic_window=2.0), ready=5)
    assert {d.desired for d in sim.run(30, const(50.0))} == {5}
    sim.run(40, const(10.0))  # from t=31 on; the last decision wanting 5 is at t=32
    assert sim.at(32).desired == 5
    assert sim.at(34).desired == 5 and "scale_down_delay" in sim.at(34).reason
    for t in range(34, 62, 2):
        assert sim.at(t).desired == 5, t
    assert sim.at(62).desired < 5  # t=32 has left the delay window (62 - 30, 62]
    sim.run(120, const(10.0))
    assert sim.ready == 1


def test_without_delay_scale_down_at_most_halves_per_decision() -> None:
    cfg = config(scale_down_delay=0.0)
    window = SampleWindow.for_scale(cfg)
    window.add(1.0, 1.0)  # some activity, far below one instance's worth
    ready, state, seen = 10, KpaState(), []
    for _ in range(6):
        d, state = decide(cfg, window, ready=ready, state=state, now=1.0)
        seen.append(d.desired)
        ready = d.desired
    assert seen == [5, 3, 2, 1, 1, 1]  # ceil(ready / 2): never to zero by halving
    assert "bounded" in decide(cfg, window, ready=10, state=KpaState(), now=1.0)[0].reason


def test_scale_up_rate_is_bounded() -> None:
    cfg = config(max=10_000)
    window = SampleWindow.for_scale(cfg)
    window.add(1.0, 1_000_000.0)
    d, _ = decide(cfg, window, ready=0, state=KpaState(), now=1.0)
    assert d.desired == 1000  # 1000x max(1, ready)
    d, _ = decide(
        cfg, window, ready=3, state=KpaState(), now=1.0, params=KpaParams(max_scale_up_rate=2.0)
    )
    assert d.desired == 6


# ------------------------------------------------------------------------ clamps


def test_max_clamps() -> None:
    sim = Sim(config(max=4))
    d = sim.run(60, const(1000.0))[-1]
    assert d.desired == 4 and "clamped to max 4" in d.reason


def test_min_clamps_and_prevents_sleep() -> None:
    sim = Sim(config(min=2, sleep_after=10.0))
    decisions = sim.run(120, const(0.0))
    assert {d.desired for d in decisions} == {2}
    assert "clamped to min 2" in decisions[-1].reason


# ------------------------------------------------------------------------ sleep


def test_idle_service_at_zero_stays_at_zero() -> None:
    sim = Sim(config())
    decisions = sim.run(30, const(0.0))
    assert {d.desired for d in decisions} == {0}
    assert decisions[0].reason == "idle: no activity"


def test_any_activity_wakes_from_zero() -> None:
    cfg = config()
    window = SampleWindow.for_scale(cfg)
    window.add(1.0, 0.01)
    d, state = decide(cfg, window, ready=0, state=KpaState(), now=1.0)
    assert d.desired == 1
    assert state.last_scale_up_at == 1.0


def test_sleep_after_idle_goes_straight_to_zero() -> None:
    sim = Sim(config(sleep_after=30.0), ready=3)
    sim.run(20, const(30.0))  # last activity at t=20
    decisions = sim.run(60, const(0.0))
    for t in range(22, 50, 2):
        assert sim.at(t).desired >= 1, t
    d = sim.at(50)
    # Not halved, not held by scale_down_delay: sleep_after is the promise.
    assert d.desired == 0 and d.reason.startswith("sleep: no activity for 30s")
    assert all(d.desired == 0 for d in decisions[-5:])
    assert sim.state.delay_record == ((80.0, 0),)


def test_recent_activity_keeps_one_instance_after_the_averages_reach_zero() -> None:
    sim = Sim(config(stable_window=10.0, panic_window=2.0, sleep_after=60.0))
    sim.run(6, lambda t: 2.0 if t == 5 else 0.0)  # one short burst at t=5
    sim.run(30, const(0.0))
    d = sim.at(30)
    assert d.stable_concurrency == 0.0
    assert d.desired == 1 and "kept until idle for sleep_after" in d.reason
    sim.run(40, const(0.0))
    assert sim.at(64).desired == 1  # 59 s after the burst
    assert sim.at(66).desired == 0


def test_instances_that_never_saw_traffic_sleep_after_sleep_after() -> None:
    sim = Sim(config(sleep_after=20.0), ready=2)
    sim.run(40, const(0.0))
    # The first decision (t=2) starts the idle clock; no decision history yet, so the
    # delay holds nothing and the count halves (never to zero) until sleep_after.
    assert sim.at(2).desired == 1
    assert sim.at(20).desired == 1
    assert sim.at(22).desired == 0


# ------------------------------------------------------------------------ cpu


def test_cpu_signal_dominates_when_larger() -> None:
    cfg = config(target_cpu=0.5)
    sim = Sim(cfg, ready=4, follow=False)
    d = sim.run(60, const(10.0), cpu=const(0.9))[-1]
    assert d.desired_stable == 1
    assert d.desired_cpu == 8  # ceil(4 x 0.9 / 0.5)
    assert d.desired == 8 and d.reason.startswith("cpu 90% of limit")


def test_concurrency_dominates_when_cpu_is_low() -> None:
    sim = Sim(config(target_cpu=0.7), ready=4, follow=False)
    d = sim.run(60, const(40.0), cpu=const(0.1))[-1]
    assert d.desired_cpu == 1 and d.desired == 4
    assert d.reason.startswith("concurrency")


def test_cpu_ignored_without_target_cpu() -> None:
    sim = Sim(config(), ready=4, follow=False)
    d = sim.run(60, const(10.0), cpu=const(1.0))[-1]
    assert d.desired_cpu is None and d.cpu_utilization is None and d.desired == 2


# ------------------------------------------------------------------------ properties

configs = st.builds(
    lambda lo, span, target, cpu, stable, panic_frac, delay, sleep: config(
        min=lo,
        max=max(1, lo + span),
        target_concurrency=target,
        target_cpu=cpu,
        stable_window=stable,
        panic_window=max(1.0, stable * panic_frac),
        scale_down_delay=delay,
        sleep_after=sleep,
    ),
    st.integers(0, 5),
    st.integers(0, 20),
    st.integers(1, 50),
    st.one_of(st.none(), st.floats(0.1, 1.0)),
    st.floats(2.0, 60.0),
    st.floats(0.05, 1.0),
    st.sampled_from([0.0, 4.0, 30.0]),
    st.sampled_from([0.0, 10.0, 60.0, 300.0]),
)
steps = st.lists(
    st.tuples(
        st.floats(0.0, 2000.0) | st.just(0.0),  # concurrency sample
        st.floats(0.0, 2.0),  # cpu sample
        st.integers(0, 40),  # ready instances at this decision (not necessarily what we asked)
    ),
    min_size=1,
    max_size=60,
)


def _simulate(cfg: ScaleConfig, script: list[tuple[float, float, int]]) -> list[Decision]:
    window, cpu, state = SampleWindow.for_scale(cfg), SampleWindow.for_scale(cfg), KpaState()
    out = []
    for i, (value, util, ready) in enumerate(script):
        now = float(i + 1)
        window.add(now, value)
        cpu.add(now, util)
        d, state = decide(cfg, window, ready=ready, state=state, now=now, cpu=cpu)
        out.append(d)
    return out


@settings(max_examples=300, deadline=None)
@given(configs, steps)
def test_desired_always_within_min_and_max(cfg: ScaleConfig, script: list) -> None:
    for d in _simulate(cfg, script):
        assert cfg.min <= d.desired <= cfg.max


@settings(max_examples=300, deadline=None)
@given(configs, steps)
def test_never_below_current_while_panicking(cfg: ScaleConfig, script: list) -> None:
    for d in _simulate(cfg, script):
        if d.panicking:
            assert d.desired >= min(d.ready, cfg.max)


@settings(max_examples=300, deadline=None)
@given(configs, steps)
def test_scale_down_never_more_than_halves_unless_sleeping(cfg: ScaleConfig, script: list) -> None:
    for d in _simulate(cfg, script):
        if d.desired and not d.reason.startswith(("sleep", "idle")):
            assert d.desired >= min(-(-d.ready // 2), cfg.max)


@settings(max_examples=200, deadline=None)
@given(configs, steps)
def test_deterministic_for_the_same_inputs(cfg: ScaleConfig, script: list) -> None:
    assert _simulate(cfg, script) == _simulate(cfg, script)
    # ... and a single call neither mutates its inputs nor depends on hidden state.
    window = SampleWindow.for_scale(cfg)
    for i, (value, _util, _ready) in enumerate(script):
        window.add(float(i + 1), value)
    now = float(len(script))
    ready = script[-1][2]
    first = decide(cfg, window, ready=ready, state=KpaState(), now=now)
    assert decide(cfg, window, ready=ready, state=KpaState(), now=now) == first
