"""Auth codes of terminals that authenticated, for when the database cannot be asked.

In memory, per vehicle, as of its last successful authentication, and the code of a later
registration (which must replace the old one). With ``serve --workers N`` a terminal reconnects
to whichever worker the kernel picks, so each worker also appends what it learns to a file of its
own under the data dir, and reads the other workers' files, from where it stopped, only when it
needs an answer the database cannot give: nothing is read or parsed while the database answers,
and the append is one small unsynced write per authentication or registration (not per
position). The newest record wins (wall-clock order), whichever file it came from.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ingest.directory import Vehicle


class AuthCache:
    def __init__(self, directory: Path | None = None, worker: int = 0, workers: int = 1) -> None:
        self._vehicles: dict[str, tuple[float, Vehicle]] = {}  # phone key → (when, vehicle)
        self._codes: dict[str, tuple[float, str]] = {}  # phone key → (when, registered code)
        self._forgotten: dict[str, float] = {}  # phone key → when its code stopped working
        self._fd: int | None = None
        self._others: dict[Path, int] = {}  # another worker's file → bytes read so far
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            mine = directory / f"worker-{worker}.jsonl"
            self._fd = os.open(mine, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
            self._others = {directory / f"worker-{k}.jsonl": 0 for k in range(workers)
                            if k != worker}  # fmt: skip

    def remember(self, vehicle: Vehicle) -> None:
        """A successful authentication."""
        at = time.time()
        self._vehicles[vehicle.phone] = (at, vehicle)
        self._share({"key": vehicle.phone, "t": at, "vehicle": asdict(vehicle)})

    def new_code(self, key: str, code: str) -> None:
        """A registration gave the terminal ``code``: its old one must not work any more."""
        at = time.time()
        self._codes[key] = (at, code)
        self._share({"key": key, "t": at, "code": code})

    def forget(self, key: str) -> None:
        """The database no longer has the code this cache holds (an operator unbound the
        terminal, or it registered anew elsewhere): no answer from here until it
        authenticates again."""
        at = time.time()
        self._vehicles.pop(key, None)
        self._codes.pop(key, None)
        self._forgotten[key] = at
        self._share({"key": key, "t": at, "forget": True})

    def keys(self) -> list[str]:
        """The terminals this worker would answer for (to check against the database)."""
        return list(self._vehicles)

    def get(self, key: str) -> Vehicle | None:
        """The vehicle with its newest code, as any worker last saw it."""
        self._catch_up()
        return self.peek(key)

    def peek(self, key: str) -> Vehicle | None:
        """:meth:`get` from what this worker knows already (reads no file)."""
        held = self._vehicles.get(key)
        if held is None or held[0] <= self._forgotten.get(key, 0.0):
            return None
        at, vehicle = held
        newer = self._codes.get(key)
        if newer is not None and newer[0] > at:
            return replace(vehicle, auth_code=newer[1])
        return vehicle

    def _share(self, record: dict[str, Any]) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):  # a full disk must not fail authentications
                os.write(self._fd, json.dumps(record, ensure_ascii=False).encode() + b"\n")

    def _catch_up(self) -> None:
        """Read what the other workers wrote since the last time."""
        from ingest.directory import Vehicle

        for path, offset in self._others.items():
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1  # a line being written is read next time
            self._others[path] = offset + end
            for line in data[:end].splitlines():
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    record = json.loads(line)
                    key, at = record["key"], float(record["t"])
                    if "forget" in record:
                        self._forgotten[key] = max(at, self._forgotten.get(key, 0.0))
                    elif "vehicle" in record:
                        if at > self._vehicles.get(key, (0.0,))[0]:
                            self._vehicles[key] = (at, Vehicle(**record["vehicle"]))
                    elif at > self._codes.get(key, (0.0,))[0]:
                        self._codes[key] = (at, str(record["code"]))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
