"""What compiling Guard's HTTP hot path with mypyc would buy: an experiment, not a build.

Copies ``guard/`` and ``benchmarks/`` to a temporary directory, compiles the hot-path
modules there with mypyc (``pip install mypy`` first; gcc and the Python headers are on
these machines), and measures Guard's per-request Python work, pure and compiled, with
the exchanges of ``test_bench_proxy_path.py``. With ``--load`` it also runs
``load.py --only guard,relay,haproxy`` against the compiled copy.

    python benchmarks/compiled_hot_path.py [--load]

The modules are typed throughout and mypy accepts them. Two others on the path were left
out because the compiled module fails at import: ``routing/table.py`` (a Generic class)
and ``proxy/context.py`` (dataclass fields typed by names imported only for type
checking); ``balancing/balancers.py`` was left out with table.py, untried alone. Nothing
here changes the repository.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODULES = [
    "guard/http/plain.py",
    "guard/http/forwarding.py",
    "guard/http/codec.py",
    "guard/http/codec_httptools.py",
    "guard/proxy/http_proxy.py",
    "guard/proxy/writes.py",
    "guard/upstream/pool.py",
]
SETUP = """
from setuptools import setup
from mypyc.build import mypycify
setup(name="guard-hot-path", packages=[], ext_modules=mypycify({modules!r}, opt_level="3"))
"""
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", action="store_true", help="also run load.py on the build")
    args = parser.parse_args()
    try:
        import mypyc  # noqa: F401
    except ImportError:
        sys.exit("needs mypyc: pip install mypy")
    with tempfile.TemporaryDirectory(prefix="guard-mypyc-") as tmp:
        root = Path(tmp)
        shutil.copytree(REPO / "guard", root / "guard")
        shutil.copytree(REPO / "benchmarks", root / "benchmarks")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run([sys.executable, "-c", MEASURE], cwd=REPO, env=env, check=True)
        (root / "setup.py").write_text(SETUP.format(modules=MODULES))
        subprocess.run(
            [sys.executable, "setup.py", "build_ext", "--inplace"],
            cwd=root,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        env = {**os.environ, "PYTHONPATH": str(root)}
        subprocess.run([sys.executable, "-c", MEASURE], cwd=root, env=env, check=True)
        if args.load:
            load = [sys.executable, "benchmarks/load.py", "--duration", "6"]
            load += ["--only", "guard,relay,haproxy", "--results", str(root / "results.md")]
            subprocess.run(load, cwd=root, env=env, check=True)


if __name__ == "__main__":
    main()
