"""Which leftover containers a restarted Guard adopts: the pure rules of
guard.control.adoption and the spec digest the docker driver labels containers with.
(tests/test_containers_docker.py does it with a real daemon and a SIGKILLed Guard.)"""

from __future__ import annotations

from guard.config.model import ContainerSpec, ScaleConfig, ServiceConfig
from guard.control.adoption import adoptable
from guard.drivers.base import InstanceHandle
from guard.drivers.docker import Leftover, spec_digest

SPEC = ContainerSpec(driver="docker", image="app:1", command=("serve",))


def svc(name: str, spec: ContainerSpec | None = SPEC, **kw: object) -> ServiceConfig:
    return ServiceConfig(name=name, container=spec, **kw)  # type: ignore[arg-type]


def left(
    instance: str, service: str, *, key: str | None = None, spec: ContainerSpec = SPEC, at: float
) -> Leftover:
    handle = InstanceHandle(id=instance, driver="docker", host="127.0.0.1", port=1)
    return Leftover(handle, service, key, spec_digest(spec, "host"), at)


def digest(spec: ContainerSpec) -> str:
    return spec_digest(spec, "host")


def ids(found: dict[str, list[Leftover]]) -> dict[str, list[str]]:
    return {service: [lo.handle.id for lo in lefts] for service, lefts in found.items()}


def test_digest_changes_with_the_spec_and_the_network() -> None:
    assert spec_digest(SPEC, "host") == spec_digest(
        ContainerSpec("docker", "app:1", ("serve",)), "host"
    )
    assert spec_digest(SPEC, "host") != spec_digest(SPEC, "bridge")
    for other in (
        ContainerSpec("docker", "app:2", ("serve",)),
        ContainerSpec("docker", "app:1", ("serve", "-v")),
        ContainerSpec("docker", "app:1", ("serve",), env=(("A", "1"),)),
        ContainerSpec("docker", "app:1", ("serve",), stop_timeout=3.0),
    ):
        assert spec_digest(other, "host") != spec_digest(SPEC, "host")


def test_only_running_services_with_the_same_spec_adopt() -> None:
    services = {
        "app": svc("app"),
        "new": svc("new", ContainerSpec("docker", "app:2", ("serve",))),
        "proc": svc("proc", ContainerSpec("process", command=("serve",))),
    }
    found = adoptable(
        [
            left("app-i-1", "app", at=2),
            left("app-i-0", "app", at=1),
            left("new-i-1", "new", at=1),  # made from app:1, the service now runs app:2
            left("gone-i-1", "gone", at=1),  # the service was removed
            left("proc-i-1", "proc", at=1),  # now a process service
        ],
        services,
        digest,
    )
    assert ids(found) == {"app": ["app-i-0", "app-i-1"]}  # oldest first


def test_shape_keys_and_scale_max() -> None:
    services = {
        "pool": svc("pool", scale=ScaleConfig(max=2)),
        "sbx": svc("sbx", per_key=True),
    }
    found = adoptable(
        [
            left("pool-i-1", "pool", at=1),
            left("pool-i-2", "pool", at=2),
            left("pool-i-3", "pool", at=3),  # beyond max: reaped
            left("pool-k-1", "pool", key="k", at=4),  # a key on a pooled service
            left("sbx-a-1", "sbx", key="a", at=1),
            left("sbx-a-2", "sbx", key="a", at=2),  # a second owner of key a
            left("sbx-b-1", "sbx", key="b", at=3),
            left("sbx-i-1", "sbx", at=4),  # no key on a per-key service
        ],
        services,
        digest,
    )
    assert ids(found) == {"pool": ["pool-i-1", "pool-i-2"], "sbx": ["sbx-a-1", "sbx-b-1"]}
