"""The codec's one exception type: every failure has a machine-readable kind and a reason."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .header import Header


class JT808Error(ValueError):
    """A frame or message that cannot be decoded or encoded.

    ``kind`` is one of: ``framing``, ``escape``, ``checksum``, ``header``, ``body``, ``encode``.
    ``header`` is set when the header was readable, so a server can still answer the terminal
    (0x8001 result 2, "message error") using its serial and message id.
    """

    def __init__(self, kind: str, reason: str, header: Header | None = None) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason
        self.header = header
