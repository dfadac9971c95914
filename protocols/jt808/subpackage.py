"""Subpackage reassembly (attribute bit 13): parts keyed by (terminal, message id, total).

Parts may arrive out of order, twice, or not at all; serials of the parts need not be
contiguous. A message quiet for ``timeout`` seconds with parts missing becomes *due*: the
caller asks the terminal for the missing indexes (0x8003 / 0x0005), up to ``max_requests``
times, after which the message is abandoned. Time is passed in by the caller (sans-I/O).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .codec import DEFAULT_PROFILE, Message, TerminalProfile, decode_body
from .errors import JT808Error
from .header import V2013, V2019

Key = tuple[str, int, int]


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
    size: int = 0

    @property
    def missing(self) -> list[int]:
        return [i for i in range(1, self.total + 1) if i not in self.parts]


class Reassembler:
    """Collect subpackage parts; :meth:`add` returns the whole message once complete."""

    def __init__(
        self,
        timeout: float = 10.0,
        max_requests: int = 3,
        max_pending: int = 256,
        max_bytes: int = 8 << 20,
        profile: TerminalProfile = DEFAULT_PROFILE,
    ) -> None:
        self.timeout = timeout
        self.max_requests = max_requests
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self.profile = profile
        self.pending: dict[Key, PendingMessage] = {}
        self.duplicates = 0
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
                header.phone, header.msg_id, total, message
            )
        if index in pending.parts:
            self.duplicates += 1
        else:
            data = message.raw_body
            if pending.size + len(data) > self.max_bytes:
                del self.pending[key]
                raise JT808Error(
                    "body", f"reassembled message exceeds {self.max_bytes} bytes", header
                )
            pending.parts[index] = data
            pending.serials[index] = header.serial
            pending.size += len(data)
        if index == 1:
            pending.first = message
            pending.first_serial = header.serial
        elif 1 not in pending.parts:
            pending.first_serial = (header.serial - index + 1) & 0xFFFF
        pending.last_seen = now
        if len(pending.parts) < total:
            return None
        del self.pending[key]
        self._completed[key] = (pending.first_serial, now)
        return self._assemble(pending)

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
        """Messages to re-request now (quiet for ``timeout``), and those given up on.

        Each returned request counts as one attempt and restarts the message's timer."""
        request, abandon = [], []
        for key, (_, when) in list(self._completed.items()):
            if now >= when + self.timeout:
                del self._completed[key]
        for key, pending in list(self.pending.items()):
            if now < pending.last_seen + self.timeout:  # not now - last_seen: float rounding
                continue
            if pending.requests >= self.max_requests:
                del self.pending[key]
                abandon.append(pending)
            else:
                pending.requests += 1
                pending.last_seen = now
                request.append(pending)
        return request, abandon
