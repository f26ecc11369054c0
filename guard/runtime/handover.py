"""Binary restarts: start the next Guard on our sockets, hand over once it serves.

On SIGUSR2 (``guard reload --binary``) the running Guard, a lone worker or the supervisor,
starts a new one with the same command line, so the code and guard.yaml on disk now apply,
passing its listening sockets (``guard.runtime.sockets``) and the write end of a pipe. The
new Guard writes ``ready`` into that pipe only once its listeners are serving; then the old
one stops accepting, drains and exits 0. If the new one exits first (a bad config, a port it
cannot bind, a crash) or is not ready within ``READY_TIMEOUT``, the old one logs why and
keeps serving: there is never a moment without a process accepting.

Supervisors use the same pipe to learn that each of their workers is serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from guard.config.model import GuardConfig
from guard.runtime.sockets import ENV as LISTEN_FDS_ENV
from guard.runtime.sockets import ListenSockets, open_sockets, read_env

log = logging.getLogger("guard.handover")

READY_ENV = "GUARD_READY_FD"
PREVIOUS_ENV = "GUARD_PREVIOUS_PID"  # the pid of the Guard this one takes over from
READY_TIMEOUT = 60.0  # a Guard starting container controllers may take a while
# The ready pipe carries lines: "adopted ID ID ..." (the instances the new Guard took over
# from the old one, so the old one releases those and stops the rest), then "ready".
_READY = b"ready"
_ADOPTED = b"adopted"


@dataclass(frozen=True, slots=True)
class Successor:
    """A new Guard that serves: its pid, and the instances it adopted from this one."""

    pid: int
    adopted: frozenset[str] = frozenset()


def notify_ready(adopted: Iterable[str] = ()) -> None:
    """Tell whoever started this process that its listeners are serving (once), and which
    of its instances this one adopted."""
    fd = os.environ.pop(READY_ENV, None)
    if fd is None:
        return
    message = b" ".join([_ADOPTED, *(i.encode("ascii") for i in sorted(adopted))])
    try:
        os.write(int(fd), message + b"\n" + _READY + b"\n")
        os.close(int(fd))
    except (OSError, ValueError) as e:
        log.warning("cannot report readiness on fd %s: %s", fd, e)


_predecessor: list[int] = []  # the pid this process took over from, if it did


def predecessor() -> int | None:
    """The pid of the Guard this one took over from (None: a plain start)."""
    return _predecessor[0] if _predecessor else None


async def wait_exit(pid: int, poll: float = 0.1) -> None:
    """Return once process ``pid`` has exited. A pidfd (Linux 5.3+) turns readable when it
    does, zombie or not; elsewhere ``pid`` is polled (a zombie counts as exited: its parent,
    not this process, reaps it)."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        while _running(pid):
            await asyncio.sleep(poll)
        return
    exited = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc: kill() said it exists


def take_sockets(
    config: GuardConfig, *, slots: int, reuse_port: bool, admin: bool = True
) -> ListenSockets:
    """This process's listening sockets: those it inherited (from the Guard it takes over
    from, or from its supervisor) where the config still has them, the rest bound now.
    OSError when one cannot be bound."""
    previous = os.environ.pop(PREVIOUS_ENV, None)
    inherited = read_env()
    os.environ.pop(LISTEN_FDS_ENV, None)  # children (instances, workers) get their own
    sockets, account = open_sockets(
        config, slots=slots, reuse_port=reuse_port, inherited=inherited, admin=admin
    )
    if previous is not None and previous.isdigit():
        _predecessor[:] = [int(previous)]
        log.info("restart: pid %d takes over from pid %s: %s", os.getpid(), previous, account)
    return sockets


def ready_pipe() -> tuple[int, int]:
    """(read end, write end): the write end is passed to the child, then closed here."""
    return os.pipe()


async def wait_ready(read_fd: int, timeout: float) -> frozenset[str] | None:
    """Once the child wrote ``ready``: the instance ids it said it adopted. None at EOF (it
    exited, or closed the pipe without being ready) or after ``timeout``. Closes
    ``read_fd``."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[frozenset[str] | None] = loop.create_future()
    got = bytearray()

    def readable() -> None:
        try:
            data = os.read(read_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        got.extend(data)
        if done.done():
            return
        lines = bytes(got).split(b"\n")[:-1]  # complete lines only
        if _READY in lines:
            adopted: set[str] = set()
            for line in lines:
                words = line.split()
                if words[:1] == [_ADOPTED]:
                    adopted.update(w.decode("ascii", "replace") for w in words[1:])
            done.set_result(frozenset(adopted))
        elif not data:
            done.set_result(None)

    os.set_blocking(read_fd, False)
    loop.add_reader(read_fd, readable)
    try:
        return await asyncio.wait_for(done, timeout)
    except TimeoutError:
        return None
    finally:
        loop.remove_reader(read_fd)
        os.close(read_fd)


def successor_command() -> list[str]:
    """This process's own command line, run by this interpreter: ``python -m guard run``
    again picks up upgraded code; a console script re-reads its entry point."""
    return [sys.executable, *sys.orig_argv[1:]]


async def start_successor(
    sockets: ListenSockets, *, timeout: float = READY_TIMEOUT
) -> Successor | None:
    """Start the next Guard on ``sockets``; once it serves, its pid and what it adopted;
    None (logged) if it does not."""
    described, fds = sockets.describe()
    read_fd, write_fd = ready_pipe()
    env = {
        **os.environ,
        LISTEN_FDS_ENV: described,
        READY_ENV: str(write_fd),
        PREVIOUS_ENV: str(os.getpid()),
    }
    try:
        proc = subprocess.Popen(successor_command(), env=env, pass_fds=(*fds, write_fd))
    except OSError as e:
        os.close(read_fd)
        log.error("restart failed: cannot start a new Guard: %s; pid %d serves on", e, os.getpid())
        return None
    finally:
        os.close(write_fd)  # the child's copy is the only one: EOF tells that it is gone
    log.info(
        "restart: started pid %d with %d inherited sockets (fds %s); waiting until it serves",
        proc.pid,
        len(fds),
        ",".join(map(str, fds)),
    )
    try:
        ready = await wait_ready(read_fd, timeout)
    except asyncio.CancelledError:
        # This Guard is stopping (SIGTERM) while the next one starts: stop that one too,
        # rather than leave it running on our sockets unknown to whoever sent SIGTERM.
        proc.terminate()
        log.warning("restart abandoned: pid %d stopped, this Guard is stopping", proc.pid)
        raise
    if ready is not None:
        log.info(
            "restart: pid %d serves (adopted %d instances); pid %d stops accepting and drains",
            proc.pid,
            len(ready),
            os.getpid(),
        )
        return Successor(proc.pid, ready)
    if proc.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.wait, 2.0)  # it closed the pipe on its way out
    if proc.poll() is None:
        why = f"not ready after {timeout:.0f}s; killed"
        proc.kill()
    else:
        why = f"exited with status {proc.returncode} before it was ready"
    await asyncio.to_thread(proc.wait)
    log.error(
        "restart failed: new Guard (pid %d) %s (its errors are above); pid %d keeps serving",
        proc.pid,
        why,
        os.getpid(),
    )
    return None


class PidFile:
    """``pid_file``: written once this process serves, removed at exit only while it
    still names this process (after a restart it names the successor)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            tmp.write_text(f"{os.getpid()}\n")
            os.replace(tmp, self.path)  # whole or not at all: a reader never sees half
        except OSError as e:
            log.error("cannot write pid_file %s: %s", self.path, e)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def remove(self) -> None:
        if self.path is None:
            return
        try:
            if self.path.read_text().strip() == str(os.getpid()):
                self.path.unlink()
        except OSError:
            pass


def read_pid(path: Path) -> int:
    """The pid in a pid file; ValueError with the reason when there is none."""
    try:
        text = path.read_text().strip()
    except OSError as e:
        raise ValueError(f"{path}: cannot read pid file: {e.strerror}") from None
    if not text.isdigit():
        raise ValueError(f"{path}: no pid in it ({text[:40]!r})")
    return int(text)
