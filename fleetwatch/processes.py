"""The processes ``fleetwatch serve`` keeps alive: its worker processes and its embedded
PostgreSQL.

Workers die with their parent: the kernel sends them SIGTERM when it exits, however it exits
(``PR_SET_PDEATHSIG``), and each worker also checks once a second that its parent is still the
one that started it (the signal is Linux-only). So killing worker 0 never leaves a worker
serving on the port as an orphan that nothing supervises. A worker that dies is started again,
after a pause that doubles (1 s to 30 s) while it keeps dying soon after its start.

The embedded cluster is watched once a second; when its postmaster is gone (killed, crashed)
it is started again in a thread (crash recovery can take seconds; acks meanwhile come from the
spool) and the writers are told to try the database at once (the other workers notice it is
back by the same once-a-second look).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

log = Logger()

PR_SET_PDEATHSIG = 1
RESTART_MIN_S, RESTART_MAX_S = 1.0, 30.0
#: A worker that ran this long before dying is restarted after the shortest pause again.
HEALTHY_S = 30.0


def die_with_parent(parent: int) -> bool:
    """In a worker, first thing: ask the kernel for SIGTERM when the parent exits. False if
    ``parent`` is gone already (it died before the call: too late for the signal). Called by
    the worker itself rather than as a ``preexec_fn``, which is unsafe in a threaded parent."""
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: ParentWatch still notices within a second
    return os.getppid() == parent


class Workers:
    """Worker processes 1..N-1, started by :meth:`start`, restarted by :meth:`check`."""

    def __init__(self, count: int, command: Callable[[int], list[str]]) -> None:
        self.count = count
        self.command = command
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.started: dict[int, float] = {}
        self.pause: dict[int, float] = {}
        self.due: dict[int, float] = {}  # index → when a dead worker is started again
        self.restarts = 0
        self.stopping = False

    def start(self) -> None:
        for index in range(1, self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self.procs[index] = subprocess.Popen(self.command(index))
        self.started[index] = time.monotonic()

    def check(self) -> None:
        """Notice dead workers and start them again when their pause is over."""
        if self.stopping:
            return
        now = time.monotonic()
        for index, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            if index not in self.due:
                ran = now - self.started[index]
                pause = RESTART_MIN_S if ran > HEALTHY_S else min(
                    RESTART_MAX_S, self.pause.get(index, RESTART_MIN_S / 2) * 2
                )  # fmt: skip
                self.pause[index] = pause
                self.due[index] = now + pause
                log.warn(
                    "worker {index} (pid {pid}) exited with {code} after {ran:.0f} s; "
                    "starting it again in {pause:.0f} s",
                    index=index, pid=proc.pid, code=code, ran=ran, pause=pause,
                )  # fmt: skip
            elif now >= self.due[index]:
                del self.due[index]
                self.restarts += 1
                self._spawn(index)

    def stop(self) -> None:
        """Ask the workers to stop (they flush their writers first) and wait for them."""
        self.stopping = True
        for worker in self.procs.values():
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.procs.values():
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()


class ParentWatch:
    """In a worker: stop when the process that started it is gone (``PR_SET_PDEATHSIG``'s
    backup)."""

    def __init__(self, parent: int, stop: Callable[[], object]) -> None:
        self.parent = parent
        self.stop = stop
        self.stopped = False

    def check(self) -> None:
        if not self.stopped and os.getppid() != self.parent:
            self.stopped = True
            log.warn("the parent process {pid} is gone; stopping", pid=self.parent)
            self.stop()


class ClusterWatch:
    """Start the embedded cluster again whenever its postmaster is gone (worker 0), or only
    notice that it is back (``restart=False``, the other workers), and call ``restarted``."""

    def __init__(self, cluster: Any, restarted: Callable[[], None], restart: bool = True) -> None:
        self.cluster = cluster
        self.restarted = restarted
        self.restart = restart
        self.was_running = True
        self.busy = False
        self.failures = 0
        self.next_try = 0.0
        self.restarts = 0

    def check(self) -> None:
        from twisted.internet.threads import deferToThread

        if not self.restart:
            running = self.cluster.running
            if running and not self.was_running:
                self.restarted()
            self.was_running = running
            return
        if self.busy or time.monotonic() < self.next_try or self.cluster.running:
            return
        self.busy = True
        began = time.monotonic()
        log.warn("the embedded PostgreSQL is not running; starting it again")

        def started(_: object) -> None:
            self.failures = 0
            self.restarts += 1
            log.info("PostgreSQL started again in {s:.1f} s", s=time.monotonic() - began)
            self.restarted()

        def failed(failure: Any) -> None:
            self.failures += 1
            pause = min(RESTART_MAX_S, 2.0**self.failures)
            self.next_try = time.monotonic() + pause
            log.error(
                "PostgreSQL did not start ({error}); next try in {pause:.0f} s",
                error=failure.getErrorMessage(), pause=pause,
            )  # fmt: skip

        d = deferToThread(self.cluster.start)
        d.addCallbacks(started, failed)
        d.addBoth(lambda _: setattr(self, "busy", False))
