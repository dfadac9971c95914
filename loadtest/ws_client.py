"""A plain WebSocket client of the dashboard's live feed (asyncio streams + wsproto), for the tests
and ``loadtest.bench_live``: it logs in over REST like the page, opens ``/api/live`` with the
session cookie and the page's Origin, answers pings, and queues each message with the time it
arrived (``time.time()``, so it compares with the server's ``durable_ms``)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import time
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)


class Refused(Exception):
    """The server answered the upgrade with an HTTP error (status and body)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"{status}: {body[:200]!r}")
        self.status = status
        self.body = body


def login(port: int, username: str, password: str) -> str:
    """The ``Cookie`` header of a fresh session (blocking: call it in a thread)."""
    cookies: dict[str, str] = {}

    def call(method: str, path: str, body: Any = None) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}
        if body is not None:
            headers["Content-Type"] = "application/json"
            headers["X-CSRF-Token"] = cookies.get("fw_csrf", "")
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        reply = conn.getresponse()
        reply.read()
        for line in reply.headers.get_all("Set-Cookie") or []:
            name, _, rest = line.partition("=")
            cookies[name] = rest.split(";", 1)[0]
        conn.close()
        if reply.status != 200:
            raise Refused(reply.status, b"login")

    call("GET", "/api/session")
    call("POST", "/api/login", {"username": username, "password": password})
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


class LiveClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ws: WSConnection) -> None:  # fmt: skip
        self.reader, self.writer, self.ws = reader, writer, ws
        self.messages: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.answer_pings = True
        self.received_at = 0.0  # when the message :meth:`next` returned last arrived
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(
        cls, port: int, cookie: str | None, *, origin: str | None = "same",
        path: str = "/api/live", read_buffer: int | None = None,
    ) -> LiveClient:  # fmt: skip
        """Open the socket; :class:`Refused` if the server answers with an HTTP error.
        ``read_buffer``: a small SO_RCVBUF, for a client that is slow to read."""
        host = f"127.0.0.1:{port}"
        if read_buffer is not None:
            import socket

            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, read_buffer)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=read_buffer)
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        ws = WSConnection(ConnectionType.CLIENT)
        headers = []
        if cookie:
            headers.append((b"Cookie", cookie.encode()))
        if origin is not None:
            headers.append((b"Origin", (f"http://{host}" if origin == "same" else origin).encode()))
        writer.write(ws.send(Request(host=host, target=path, extra_headers=headers)))
        await writer.drain()
        status, body = 0, b""
        while True:
            data = await reader.read(65536)
            if not data:
                writer.close()
                raise Refused(status or -1, body)
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    client = cls(reader, writer, ws)
                    return client
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        writer.close()
                        raise Refused(status, b"")
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        writer.close()
                        raise Refused(status, body)

    async def _read(self) -> None:
        text: list[str] = []
        code = None
        try:
            while True:
                data = await self.reader.read(1 << 16)
                if not data:
                    break
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if isinstance(event, TextMessage):
                        text.append(event.data)
                        if event.message_finished:
                            self.messages.put_nowait((time.time(), json.loads("".join(text))))
                            text = []
                    elif isinstance(event, Ping) and self.answer_pings:
                        self.writer.write(self.ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        code = event.code
                    elif isinstance(event, BytesMessage):
                        pass
        except (ConnectionError, OSError):
            pass
        finally:
            if not self.closed.done():
                self.closed.set_result(code)

    async def next(self, kind: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """The next message (of this type, skipping others)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind or 'message'} within {timeout} s")
            at, message = await asyncio.wait_for(self.messages.get(), left)
            if kind is None or message.get("type") == kind:
                self.received_at = at
                return message

    def drain(self) -> list[dict[str, Any]]:
        """Every message received so far and not yet taken."""
        out = []
        while not self.messages.empty():
            out.append(self.messages.get_nowait()[1])
        return out

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(self.ws.send(CloseConnection(1000)))
        self.writer.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
