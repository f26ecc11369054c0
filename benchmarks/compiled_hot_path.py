"""Guard's per-request Python work, pure and with the hot path compiled (setup.py, mypyc).

Copies ``guard/`` and ``setup.py`` to a temporary directory, compiles the hot path there
the way ``GUARD_COMPILE=1 pip install .`` does (mypyc must be importable: ``pip install
mypy``; gcc and the Python headers are on these machines), and times the exchanges of
``test_bench_proxy_path.py`` against the sources and against the compiled copy, one after
the other in one run. ``load.py`` measures both builds under wrk (``guard`` and
``guard-compiled``). Nothing here changes the repository.

    python benchmarks/compiled_hot_path.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The exchange loop of test_bench_proxy_path.py, timed the same way as raw_head_prototype.py.
MEASURE = """
import asyncio, sys, time
sys.path.insert(0, "benchmarks")
import test_bench_proxy_path as b
import guard.proxy.http_proxy as hp
from guard.config.model import HttpConfig, HttpLimits, RouteConfig, ServerAddress, ServiceConfig
from guard.http.forwarding import TrustedProxies
from guard.proxy.context import ListenerContext
from guard.proxy.deadlines import DeadlineSweeper
from guard.routing import build_http_tables
from guard.upstream.pool import UpstreamConnection, UpstreamSettings
from guard.upstream.resolver import Resolver
from guard.upstream.service import Service

loop = asyncio.new_event_loop()
sweeper = DeadlineSweeper(loop, 0.5)
settings = UpstreamSettings("httptools", 65536, 256, 5.0, 60.0)
config = ServiceConfig(name="app", servers=(ServerAddress("127.0.0.1", 9),))
service = Service(config, settings, loop=loop, resolver=Resolver(), sweeper=sweeper)
routes = [RouteConfig(name="r0", listener="web", service="app")]
tables = build_http_tables(routes, {"app": service})
http = HttpConfig(limits=HttpLimits(max_requests_per_connection=1 << 62))
ctx = ListenerContext(name="web", proto=b"http", http=http, table=tables["web"],
                      sweeper=sweeper, trusted=TrustedProxies([]), via=None)
client = hp.HttpProxyProtocol(ctx)
client.connection_made(b.CountingTransport())
pool = service.pools[0]
upstream = UpstreamConnection(pool)
upstream.connection_made(b.CountingTransport())
pool.release(upstream)
compiled = hp.__file__.endswith(".so")
for name, (request, response) in b.EXCHANGES.items():
    def one():
        client.data_received(request)
        client._upstream.data_received(response)
    for _ in range(5000):
        one()
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(50_000):
            one()
        best = min(best, (time.process_time() - t0) / 50_000)
    print(f"{'compiled' if compiled else 'pure'} {name}: {best * 1e6:.2f} us per request")
"""


def main() -> None:
    try:
        import mypyc  # noqa: F401
    except ImportError:
        sys.exit("needs mypyc: pip install mypy")
    with tempfile.TemporaryDirectory(prefix="guard-mypyc-") as tmp:
        root = Path(tmp)
        shutil.copytree(REPO / "guard", root / "guard", ignore=shutil.ignore_patterns("*.so"))
        shutil.copytree(REPO / "benchmarks", root / "benchmarks")
        shutil.copy2(REPO / "setup.py", root / "setup.py")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run([sys.executable, "-c", MEASURE], cwd=REPO, env=env, check=True)
        subprocess.run(
            [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
            cwd=root,
            env={**os.environ, "GUARD_COMPILE": "1"},
            check=True,
            stdout=subprocess.DEVNULL,
        )
        env = {**os.environ, "PYTHONPATH": str(root)}
        subprocess.run([sys.executable, "-c", MEASURE], cwd=root, env=env, check=True)


if __name__ == "__main__":
    main()
