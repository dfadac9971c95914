"""Limits that keep one client (or a flood of them) from taking the server's resources.

Time is passed in (``now``, monotonic seconds) so the limits are tested without sleeping.
"""

from __future__ import annotations

import resource
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: Descriptors kept back from terminal connections: the database pool and the writer's
#: connection, spool and media files, logs, the listening sockets, worker pipes.
RESERVED_DESCRIPTORS = 128
#: Of those, what connections may use past the capacity (a listening port the gate does not
#: watch) before new ones are closed at once rather than let the process run out of files.
ACCEPT_OVERSHOOT = 32


@dataclass(slots=True)
class TokenBucket:
    """``rate`` events a second on average, ``burst`` at once."""

    rate: float
    burst: float
    tokens: float = -1.0  # full on first use
    at: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.at = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class RegistrationLimit:
    """Registrations allowed per source address and in total (under the ``open`` policy a
    registration may create a vehicle: one client once created 2,466 in 5 s).

    Buckets of idle addresses are forgotten once full again, so the table stays small."""

    per_address: float = 1.0  # a second, after a burst of ``burst``
    total: float = 20.0
    burst: float = 50.0
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    overall: TokenBucket | None = None

    def allow(self, address: str, now: float) -> bool:
        if self.overall is None:
            self.overall = TokenBucket(self.total, max(self.burst, self.total))
        if len(self.buckets) > 10_000:
            self._forget_idle(now)
        bucket = self.buckets.get(address)
        if bucket is None:
            bucket = self.buckets[address] = TokenBucket(self.per_address, self.burst)
        return bucket.take(now) and self.overall.take(now)

    def _forget_idle(self, now: float) -> None:
        for address, bucket in list(self.buckets.items()):
            if bucket.tokens + (now - bucket.at) * bucket.rate >= bucket.burst:
                del self.buckets[address]


class AddressCount:
    """Open connections per source address, against a cap (0 = no cap)."""

    __slots__ = ("cap", "open")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open: Counter[str] = Counter()

    def admit(self, address: str) -> bool:
        if self.cap and self.open[address] >= self.cap:
            return False
        self.open[address] += 1
        return True

    def release(self, address: str) -> None:
        left = self.open[address] - 1
        if left > 0:
            self.open[address] = left
        else:
            del self.open[address]


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (a Linux default soft limit of 1024
    caps a server at ~1,000 terminals); returns ``(before, after)``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return soft, hard
    return soft, soft


def connection_capacity(reserved: int = RESERVED_DESCRIPTORS) -> int:
    """How many connections this process can hold: its descriptor limit minus a reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(1, soft - reserved)


class AcceptGate:
    """Stop accepting at the descriptor limit instead of failing in ``accept``.

    At EMFILE Twisted accepts and closes each waiting connection (its reserved-descriptor
    trick) and the listening socket stays readable: the server spins, and legitimate terminals
    are refused. Counting connections against :func:`connection_capacity` and taking the
    listening sockets out of the reactor before the limit leaves new terminals waiting in the
    kernel's backlog until a descriptor frees. Twisted accepts in batches (100 at first, then
    growing), so :meth:`watch` also trims each batch to the room left."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.open = 0
        self.ports: list[Any] = []  # listening ports (``stopReading``/``startReading``)
        self.paused = False
        self.pauses = 0

    def watch(self, port: Any) -> None:
        """Pause and resume ``port`` with the others, and never let one of its accept batches
        (``numberAccepts``, which Twisted re-sets after every batch) pass the capacity."""
        self.ports.append(port)
        accept = port.doRead

        def doRead() -> Any:  # Twisted looks it up on the instance
            room = self.capacity - self.open
            port.numberAccepts = max(1, min(port.numberAccepts, room))
            return accept()

        port.doRead = doRead

    def admit(self) -> bool:
        return self.open < self.capacity + ACCEPT_OVERSHOOT

    def opened(self) -> None:
        self.open += 1
        if self.open >= self.capacity and not self.paused:
            self.paused = True
            self.pauses += 1
            for port in self.ports:
                port.stopReading()

    def closed(self) -> None:
        self.open -= 1
        if self.paused and self.open < self.capacity:
            self.paused = False
            for port in self.ports:
                if getattr(port, "connected", True) and not getattr(port, "disconnecting", False):
                    port.startReading()
