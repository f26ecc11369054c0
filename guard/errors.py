"""Errors Guard itself answers with, each mapped to a status and a stable code.

The code travels in the ``x-guard-error`` header and in a short JSON body, so clients and
dashboards can tell Guard's answers from the backend's.
"""

from __future__ import annotations


class GuardError(Exception):
    """Base of every error that becomes an HTTP answer made by Guard."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code.replace("_", " "))

    @property
    def message(self) -> str:
        return str(self.args[0])


class BadRequest(GuardError):
    status = 400
    code = "bad_request"


class RouteNotFound(GuardError):
    status = 404
    code = "route_not_found"


class ContainerNotFound(GuardError):
    """A request names a container (by its address or ``x-guard-container``) that does not
    exist here; the same answer whether it never existed or is another tenant's."""

    status = 404
    code = "container_not_found"


class ExpectationFailed(GuardError):
    status = 417
    code = "expectation_failed"


class RequestTimeout(GuardError):
    status = 408
    code = "request_timeout"


class BodyTooLarge(GuardError):
    status = 413
    code = "body_too_large"


class HeaderTooLarge(GuardError):
    status = 431
    code = "header_too_large"


class NotImplementedByGuard(GuardError):
    status = 501
    code = "not_implemented"


class UpstreamConnectFailed(GuardError):
    status = 502
    code = "upstream_connect_failed"


class UpstreamProtocolError(GuardError):
    status = 502
    code = "upstream_protocol_error"


class NoHealthyUpstream(GuardError):
    status = 503
    code = "no_healthy_upstream"


class UpstreamTimeout(GuardError):
    status = 504
    code = "upstream_timeout"


# -- waking container services (the activator)


class InvalidKey(GuardError):
    """A per-key service got no key, or one it cannot name an instance by."""

    status = 400
    code = "invalid_key"


class QueueFull(GuardError):
    """More requests are held for a wake than the service's ``scale.queue`` allows."""

    status = 503
    code = "queue_full"


class InstanceStartFailed(GuardError):
    """An instance could not be started or exited before it was ready; says why."""

    status = 503
    code = "instance_start_failed"


class InstanceLimit(GuardError):
    """A per-key service already runs ``scale.max`` instances; no room for a new key."""

    status = 503
    code = "instance_limit"


class WakeTimeout(GuardError):
    """No instance became ready within the service's ``scale.wake_timeout``."""

    status = 504
    code = "wake_timeout"


WAKE_ERRORS: dict[str, type[GuardError]] = {
    cls.code: cls for cls in (InstanceStartFailed, InstanceLimit, WakeTimeout, QueueFull)
}


class RateLimited(GuardError):
    """The route's ``rate_limit`` bucket for this client is empty; Retry-After says when."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str = "", retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(GuardError):
    """A circuit breaker (``limits``) of the service is open: refused fast, not queued."""

    status = 503
    code = "overloaded"


class ConfigError(Exception):
    """A configuration problem, reported as ``file: key.path: what is wrong``."""

    def __init__(self, file: str, key: str, message: str) -> None:
        self.file = file
        self.key = key
        self.detail = message
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")


class ConfigErrors(Exception):
    """Several configuration problems found in one pass, so a user fixes them all at once."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class NotSupportedYet(Exception):
    """A valid config key whose feature this build cannot serve yet."""

    def __init__(self, file: str, key: str) -> None:
        self.file = file
        self.key = key
        super().__init__(f"{file}: {key}: not supported yet")
