"""The admin API fuzzed by schemathesis against its own OpenAPI document (issue 6).

Every operation the document lists is called with generated requests, valid and invalid,
as the ``*`` token and as a tenant's: Guard must never answer 5xx, every answer must be
one the document declares, with the declared content type and a body that matches its
schema, and requests that break the schema must be refused (4xx).

The Guard under test serves /v1/containers but has no container driver configured, so no
request can make it start a process (a generated ``command`` is never run): container
services and containers are refused by validation instead, which is the path being fuzzed.
Bounded: a few dozen examples per operation, no shrinking of passing runs, one Guard for
the module.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from guard.admin import openapi
from tests.conftest import run_guard
from tests.helpers import free_port, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process driver")

STAR = "fuzz-star-token-0123456789"
TENANT = "fuzz-tenant-token-0123456"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
FUZZ = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same requests every run: a failure here reproduces
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)

schema = schemathesis.openapi.from_dict(openapi.spec())
# Valid requests and requests that break the schema (negative_data_rejection wants a 4xx).
schema.config.generation.update(modes=list(schemathesis.GenerationMode))


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    directory = tmp_path_factory.mktemp("fuzz") / "g"
    extra = {
        "admin": {
            "address": f"127.0.0.1:{port}",
            "tokens": [
                {"token_env": "GUARD_FUZZ_STAR", "tenant": "*"},
                {"token_env": "GUARD_FUZZ_TENANT", "tenant": "t1"},
            ],
        },
        "tenants": {"t1": {"max_containers": 2, "max_cpu": 1, "max_memory": "1GiB"}},
        # /v1/containers served, but with no driver a generated container is refused (400)
        "containers": {"domain": "containers.localhost", "listener": "web"},
    }
    routes = [{"name": "base", "match": {"host": "base.test"}, "service": "base"}]
    services = {"base": {"servers": [f"127.0.0.1:{free_port()}"]}}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GUARD_FUZZ_STAR", STAR)  # run_guard passes os.environ on to Guard
        env.setenv("GUARD_FUZZ_TENANT", TENANT)
        with run_guard(directory, "httptools", routes, services, extra=extra):
            wait_for(lambda: _answers(port), 15, "the admin API")
            yield port


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@schema.parametrize()
@FUZZ
def test_admin_api_as_star(case: schemathesis.Case, admin: int) -> None:
    case.call_and_validate(
        base_url=f"http://127.0.0.1:{admin}",
        headers={"Authorization": f"Bearer {STAR}"},
        checks=CHECKS,
        timeout=15,
    )


@schema.parametrize()
@FUZZ
def test_admin_api_as_tenant(case: schemathesis.Case, admin: int) -> None:
    case.call_and_validate(
        base_url=f"http://127.0.0.1:{admin}",
        headers={"Authorization": f"Bearer {TENANT}"},
        checks=CHECKS,
        timeout=15,
    )
