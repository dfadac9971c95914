"""Subpackage reassembly (attribute bit 13): parts keyed by (terminal, message id, total).

Parts may arrive out of order, twice, or not at all; serials of the parts need not be
contiguous. A message quiet for ``timeout`` seconds with parts missing becomes *due*: the
caller asks the terminal for the missing indexes (0x8003 / 0x0005), up to ``max_requests``
times, after which the message is abandoned. Time is passed in by the caller (sans-I/O).

Everything held is bounded, because parts arrive before anything checks what they add up to:
per reassembler (one connection) in messages, parts and bytes, per message in age (a trickle of
parts cannot keep one alive), and across reassemblers by a shared :class:`ReassemblyBudget`.
A part that would pass a bound drops its whole message (``JT808Error``): a half message is of
no use, and the terminal is told so by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .codec import DEFAULT_PROFILE, Message, TerminalProfile, decode_body
from .errors import JT808Error
from .header import V2013, V2019

Key = tuple[str, int, int]

#: What one held part costs besides its body (dict entries, the bytes object): counted so that
#: thousands of empty parts are bounded too.
PART_OVERHEAD = 100
#: Indexes one 0x8003 can carry: its count is a BYTE before 2019; a 2019 WORD count is bounded by
#: the 1023-byte body (serial WORD + count WORD + 2 bytes per index).
RESEND_MAX_IDS = {V2019: (1023 - 4) // 2}
RESEND_MAX_IDS_BEFORE_2019 = 255


class ReassemblyBudget:
    """Bytes held by all reassemblers together (one per connection), against one limit."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int = 256 << 20) -> None:
        self.limit = limit
        self.used = 0


def resend_batches(missing: list[int], version: int) -> list[list[int]]:
    """``missing`` cut into the lists single 0x8003 requests can carry in ``version``."""
    step = RESEND_MAX_IDS.get(version, RESEND_MAX_IDS_BEFORE_2019)
    return [missing[i : i + step] for i in range(0, len(missing), step)]


@dataclass(slots=True)
class PendingMessage:
    phone: str
    msg_id: int
    total: int
    first: Message  # a part, for the header fields of the whole message
    parts: dict[int, bytes] = field(default_factory=dict)
    serials: dict[int, int] = field(default_factory=dict)
    first_serial: int = 0  # serial of part 1: the "original serial" of 0x8003
    last_seen: float = 0.0
    requests: int = 0
    size: int = 0  # bytes charged: bodies plus PART_OVERHEAD per part
    started: float = 0.0  # when its first part arrived (the age bound)

    @property
    def missing(self) -> list[int]:
        return [i for i in range(1, self.total + 1) if i not in self.parts]


class Reassembler:
    """Collect subpackage parts; :meth:`add` returns the whole message once complete."""

    def __init__(
        self,
        timeout: float = 10.0,
        max_requests: int = 3,
        max_pending: int = 16,
        max_bytes: int = 8 << 20,
        max_parts: int = 8192,
        max_age: float = 600.0,
        budget: ReassemblyBudget | None = None,
        profile: TerminalProfile = DEFAULT_PROFILE,
    ) -> None:
        self.timeout = timeout
        self.max_requests = max_requests
        self.max_pending = max_pending  # messages at once
        self.max_bytes = max_bytes  # over all pending messages, PART_OVERHEAD included
        self.max_parts = max_parts  # over all pending messages, and the most one may announce
        self.max_age = max_age  # seconds from a message's first part to its last
        self.budget = budget
        self.profile = profile
        self.pending: dict[Key, PendingMessage] = {}
        self.duplicates = 0
        self.bytes = 0
        self.parts = 0
        # Recently completed messages (key -> first serial, when): a part retransmitted after
        # its message completed is a duplicate, not the start of a new message to re-request.
        self._completed: dict[Key, tuple[int, float]] = {}

    def add(self, message: Message, now: float) -> Message | None:
        """Add a part (a message whose header has package fields)."""
        header = message.header
        total, index = header.pkg_total, header.pkg_index
        if total is None or index is None:
            return message
        if not 1 <= index <= total:
            raise JT808Error("header", f"package index {index} outside 1..{total}", header)
        if total > self.max_parts:
            raise JT808Error("body", f"{total} parts announced, at most {self.max_parts}", header)
        key = (header.phone, header.msg_id, total)
        pending = self.pending.get(key)
        done = self._completed.get(key)
        late = done is not None and now - done[1] < self.timeout
        if (
            pending is None
            and done is not None
            and late
            and (header.serial - index + 1) & 0xFFFF == done[0]
        ):
            self.duplicates += 1  # a part retransmitted after its message completed
            return None
        if pending is None:
            if len(self.pending) >= self.max_pending:
                raise JT808Error(
                    "body", f"{self.max_pending} messages already pending reassembly", header
                )
            pending = self.pending[key] = PendingMessage(
                header.phone, header.msg_id, total, message, started=now
            )
        if index in pending.parts:
            self.duplicates += 1
        else:
            data = message.raw_body
            cost = len(data) + PART_OVERHEAD
            over = self._over(cost)
            if over:
                self._drop(key)
                raise JT808Error("body", f"message dropped: it would exceed {over}", header)
            pending.parts[index] = data
            pending.serials[index] = header.serial
            pending.size += cost
            self.bytes += cost
            self.parts += 1
            if self.budget is not None:
                self.budget.used += cost
        if index == 1:
            pending.first = message
            pending.first_serial = header.serial
        elif 1 not in pending.parts:
            pending.first_serial = (header.serial - index + 1) & 0xFFFF
        pending.last_seen = now
        if len(pending.parts) < total:
            return None
        self._drop(key)
        completed = self._completed
        completed.pop(key, None)  # re-inserted last: the dict stays in completion order
        completed[key] = (pending.first_serial, now)
        if len(completed) > self.max_pending * 4:  # parts may name any phone: bound it
            del completed[next(iter(completed))]
        return self._assemble(pending)

    def _over(self, cost: int) -> str:
        """Which bound one more part of ``cost`` bytes would pass ("" if none)."""
        if self.bytes + cost > self.max_bytes:
            return f"{self.max_bytes} bytes held for reassembly"
        if self.parts >= self.max_parts:
            return f"{self.max_parts} parts held for reassembly"
        budget = self.budget
        if budget is not None and budget.used + cost > budget.limit:
            return f"the server's reassembly budget ({budget.limit} bytes)"
        return ""

    def _drop(self, key: Key) -> PendingMessage | None:
        """Forget a pending message and give back what it held."""
        pending = self.pending.pop(key, None)
        if pending is not None:
            self.bytes -= pending.size
            self.parts -= len(pending.parts)
            if self.budget is not None:
                self.budget.used -= pending.size
        return pending

    def clear(self) -> None:
        """Drop everything (the connection is gone): the shared budget gets its bytes back."""
        for key in list(self.pending):
            self._drop(key)
        self._completed.clear()

    def _assemble(self, pending: PendingMessage) -> Message:
        data = b"".join(pending.parts[i] for i in range(1, pending.total + 1))
        part = pending.first
        header = replace(
            part.header,
            pkg_total=None,
            pkg_index=None,
            body_len=len(data),
            serial=pending.first_serial,
        )
        problems = [p for p in part.problems if not p.startswith("body length")]
        edition = V2019 if header.version == V2019 else (self.profile.version or V2013)
        try:
            body = decode_body(header.msg_id, data, edition, self.profile.tz, problems)
        except JT808Error as exc:
            raise JT808Error(exc.kind, exc.reason, header) from None
        checksum_ok = part.checksum_ok
        serials = [pending.serials[i] for i in range(1, pending.total + 1)]
        return Message(header, body, checksum_ok, problems, data, serials)

    def due(self, now: float) -> tuple[list[PendingMessage], list[PendingMessage]]:
        """Messages to re-request now (quiet for ``timeout``), and those given up on (asked
        ``max_requests`` times in vain, or older than ``max_age``).

        Each returned request counts as one attempt and restarts the message's timer; the
        caller sends its :func:`resend_batches`."""
        request, abandon = [], []
        for key, (_, when) in list(self._completed.items()):
            if now >= when + self.timeout:
                del self._completed[key]
        for key, pending in list(self.pending.items()):
            if now >= pending.started + self.max_age:
                self._drop(key)
                abandon.append(pending)
                continue
            if now < pending.last_seen + self.timeout:  # not now - last_seen: float rounding
                continue
            if pending.requests >= self.max_requests:
                self._drop(key)
                abandon.append(pending)
            else:
                pending.requests += 1
                pending.last_seen = now
                request.append(pending)
        return request, abandon
