"""A test terminal: speaks JT/T 808 to the server over a real socket (asyncio streams)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

from protocols.jt808 import (
    BEIJING,
    V2019,
    Authenticate,
    Body,
    FrameSplitter,
    LocationReport,
    Message,
    Register,
    decode_frame,
    encode_frame,
    encode_items,
)

START = datetime(2026, 11, 22, 9, 0, 0, tzinfo=BEIJING)


def report(i: int, lat: float = 31.2, lon: float = 121.5) -> LocationReport:
    """The i-th fix of a test track: one second and ~11 m apart."""
    return LocationReport(
        status=0x3, latitude=round(lat + i * 1e-4, 6), longitude=lon, speed_kmh=40.0,
        heading=90, altitude_m=12, time=START + timedelta(seconds=i),
        items=encode_items({"mileage_km": 1000 + i / 100, "satellites": 12}),
    )  # fmt: skip


class Terminal:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, phone: str, version: int
    ) -> None:
        self.reader, self.writer = reader, writer
        self.phone, self.version = phone, version
        self.splitter = FrameSplitter()
        self.inbox: list[Message] = []
        self.serial = 0

    @classmethod
    async def connect(cls, port: int, phone: str, version: int = 2013) -> Terminal:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, phone, version)

    async def send(self, body: Body, serial: int | None = None) -> int:
        if serial is None:
            self.serial += 1
            serial = self.serial
        frame = encode_frame(body, phone=self.phone, serial=serial, version=self.version)
        await self.send_raw(frame)
        return serial

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def receive(self, timeout: float = 5.0) -> Message:
        while not self.inbox:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.inbox.extend(decode_frame(f) for f in self.splitter.feed(data))
        return self.inbox.pop(0)

    async def nothing_within(self, seconds: float) -> bool:
        """True if no message arrives within ``seconds``."""
        try:
            self.inbox.append(await self.receive(seconds))
        except TimeoutError:
            return True
        return False

    async def closed_by_server(self, timeout: float = 5.0) -> bool:
        try:
            while True:
                await self.receive(timeout)
        except ConnectionError:
            return True

    async def register(self, plate: str) -> Message:
        await self.send(
            Register(
                province=31,
                city=115,
                manufacturer="FWTST",
                model="T-1",
                terminal_id="T0001",
                plate_color=2,
                plate=plate,
            )
        )
        return await self.receive()

    async def login(self, plate: str) -> str:
        """Register and authenticate; returns the auth code."""
        answer = await self.register(plate)
        assert answer.msg_id == 0x8100 and answer.body.result == 0, answer
        code = answer.body.auth_code
        imei = "860000000000001" if self.version == V2019 else None
        sw = "1.0" if self.version == V2019 else None
        await self.send(Authenticate(auth_code=code, imei=imei, sw_version=sw))
        ack = await self.receive()
        assert (ack.msg_id, ack.body.result) == (0x8001, 0), ack
        return code

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
