"""Drivers: how container-backed services get their instances (``process``, ``docker``).

``base`` is the interface every driver implements; ``process`` runs instances as local
child processes (Linux); ``docker`` runs them as containers of a Docker daemon, through
aiodocker, labelled so that a restarted Guard finds and reaps what its last run left
(``DockerDriver.reap_orphans``). The lifecycle owner in the control plane picks the driver
named by ``container.driver`` and is the only caller.
"""

from guard.drivers.base import (
    Driver,
    DriverError,
    DriverUnavailable,
    ExitCallback,
    InstanceHandle,
    InstanceNotFound,
    InstanceState,
    InstanceStats,
    InstanceStatus,
)

__all__ = [
    "Driver",
    "DriverError",
    "DriverUnavailable",
    "ExitCallback",
    "InstanceHandle",
    "InstanceNotFound",
    "InstanceState",
    "InstanceStats",
    "InstanceStatus",
]
