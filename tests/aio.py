"""The one way tests run asyncio code under pytest-twisted's asyncio reactor.

pytest runs with ``--reactor=asyncio`` (pytest.ini): every test function, even a plain ``def``,
is called *inside* the running reactor, i.e. inside the asyncio loop. Hence:

* ``asyncio.run()`` (and ``loop.run_until_complete``) in a test fails: "cannot be called from a
  running event loop". In a sync fixture it works before the first test and fails after it.
* awaiting asyncpg directly in a Twisted coroutine (``pytest_twisted.ensureDeferred``) fails:
  "await wasn't used with future".

So: write a test as a plain asyncio coroutine decorated with :func:`aio_test`. It runs as an
asyncio Task on the reactor's loop (bridged with :func:`aio`), so the body awaits asyncpg,
asyncio streams and ``asyncio.to_thread`` directly, and awaits a Twisted Deferred through
:func:`deferred`. Twisted servers started in the test run on the same loop, so ingest tests can
talk to them over real sockets. Blocking code that itself calls ``asyncio.run`` (the CLI's
``main``) goes through ``await asyncio.to_thread(...)``; sync fixtures use :func:`run_sync`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest_twisted
from twisted.internet.defer import Deferred

T = TypeVar("T")


def aio(coro: Coroutine[Any, Any, T]) -> Deferred[T]:
    """asyncio coroutine → Deferred, run as a Task on the reactor's loop."""
    return Deferred.fromFuture(asyncio.ensure_future(coro))


async def deferred(d: Deferred[T]) -> T:
    """Await a Twisted Deferred from asyncio code (inside an :func:`aio_test`)."""
    return await d.asFuture(asyncio.get_running_loop())


def aio_test(
    fn: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., Coroutine[Any, Any, None]]:
    """Decorate an ``async def`` test (fixtures as usual) to run it as an asyncio Task."""

    @functools.wraps(fn)  # keeps the signature, so pytest still injects the fixtures
    async def test(*args: Any, **kwargs: Any) -> None:
        await aio(fn(*args, **kwargs))

    return pytest_twisted.ensureDeferred(test)


def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn`` in a worker thread and wait: for blocking code that uses ``asyncio.run``
    (the CLI's ``main``) when called from sync code such as a fixture."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code (fixtures), on a fresh loop in a thread.

    A thread, because the main thread may be inside the reactor's running loop.
    """
    return in_thread(asyncio.run, coro)
