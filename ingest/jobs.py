"""Periodic jobs that survive their own failures.

A ``LoopingCall`` whose function raises (or whose Deferred fails) stops for good: one bad
iteration of the sweep used to leave idle connections open and missing subpackages unasked
forever, and one failed partition run ended partition maintenance. :func:`every` logs the
failure and keeps the schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


def every(
    interval: float, job: Callable[[], Any], name: str, *, now: bool = False, clock: Any = None
) -> LoopingCall:
    """Run ``job`` every ``interval`` seconds (a returned Deferred is waited for); a failure is
    logged with ``name`` and counted in the loop's ``failures``, and the next run happens."""
    loop: LoopingCall

    def failed(failure: Failure) -> None:
        loop.failures += 1  # type: ignore[attr-defined]
        log.failure("{job} failed; it runs again in {interval} s", failure, job=name,
                    interval=interval)  # fmt: skip

    def run() -> Any:
        try:
            result = job()
        except Exception:
            failed(Failure())
            return None
        if isinstance(result, Deferred):
            return result.addErrback(failed)
        return None

    loop = LoopingCall(run)
    loop.failures = 0  # type: ignore[attr-defined]
    if clock is not None:
        loop.clock = clock
    loop.start(interval, now=now)
    return loop
