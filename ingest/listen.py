"""Listening sockets that several worker processes share (SO_REUSEPORT).

One Python process tops out at one core (the GIL); ``fleetwatch serve --workers N`` runs N
processes that all listen on the same port, and the kernel spreads new connections over them.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory


def listen_shared(
    reactor: Any, port: int, factory: Factory, interface: str = "", backlog: int = 4096
) -> IListeningPort:
    """Like ``reactor.listenTCP``, on a socket other processes may bind too."""
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
        sock.listen(backlog)
        sock.setblocking(False)
        return reactor.adoptStreamPort(sock.fileno(), family, factory)  # type: ignore[no-any-return]
    finally:
        sock.close()  # the reactor holds its own duplicate of the descriptor
