"""guard.admin.quota: reservations and the quota verdict (pure)."""

from __future__ import annotations

from guard.admin.quota import Reservation, exceeded, missing_limit, of_resources, of_services
from guard.config.model import ContainerSpec, Resources, ScaleConfig, ServiceConfig, TenantQuota

Q = TenantQuota("a", max_containers=4, max_cpu=2.0, max_memory=1 << 30)


def test_services_reserve_scale_max_and_static_ones_nothing() -> None:
    spec = ContainerSpec(driver="process", command=("x",), resources=Resources(0.5, 64 << 20))
    services = [
        ServiceConfig(name="c", container=spec, scale=ScaleConfig(max=3)),
        ServiceConfig(name="d", container=spec),  # the default max, 10
        ServiceConfig(name="s", servers=()),
    ]
    assert of_services(services) == Reservation(13, 6.5, 13 * (64 << 20))
    assert of_resources(Resources()) == Reservation(1, 0.0, 0)


def test_only_growth_past_a_limit_is_refused() -> None:
    at = Reservation(4, 2.0, 1 << 30)
    assert exceeded(Q, at, at) is None  # at the limit: fine
    assert exceeded(Q, Reservation(9, 9.0, 1 << 31), at) is None  # shrinking past it: fine
    assert exceeded(Q, at, Reservation(5, 2.0, 1 << 30)) == (
        "max_containers is 4 and this would reserve 5 (now 4)"
    )
    assert exceeded(Q, at, Reservation(4, 2.25, 1 << 30)) == (
        "max_cpu is 2 and this would reserve 2.25 (now 2)"
    )
    assert exceeded(Q, at, Reservation(4, 2.0, (1 << 30) + 1)) == (
        "max_memory is 1073741824 bytes and this would reserve 1073741825 (now 1073741824)"
    )
    assert exceeded(TenantQuota("b"), at, Reservation(99, 99.0, 1 << 40)) is None


def test_a_limited_quota_needs_limits() -> None:
    assert missing_limit(Q, Resources(cpu=1.0), "resources") == (
        "resources.memory: required: tenant a has a memory quota (1073741824 bytes)"
    )
    assert missing_limit(Q, Resources(memory=1), "r") == (
        "r.cpu: required: tenant a has a cpu quota (2)"
    )
    assert missing_limit(TenantQuota("b", max_containers=1), Resources(), "r") is None
