"""Durable rule state: snapshots of the rules engine in PostgreSQL, restore, replay, hand-over.

What makes a crash, a restart or a terminal's move to another worker harmless:

* **Snapshots off the ack path.** Every ``save_interval`` the vehicles whose state changed
  (``RulesEngine.dirty()``) are exported and written, ``chunk`` vehicles per statement, the
  loop free between chunks (the rules run on the ingest loop). A vehicle whose connection
  ends here is saved at once, so the worker it moves to usually finds its latest state.
* **Restore, then replay.** A snapshot covers fixes up to its ``newest`` fix time; the stored
  positions after it are replayed (the writer stores them before the rules see them, so a
  crash loses none of them). Replay is idempotent: the engine does not judge a fix at or
  before a restored vehicle's newest again, the alert store matches events to the episodes
  they continue, and an automatic text is recorded at most once per alert (migration 0007).
* **One owner per vehicle.** A worker *claims* a vehicle (first sight, start-up) and reads
  its snapshot in the same statement; a snapshot is only written by the vehicle's owner.
  Every ``poll_interval`` a worker looks for vehicles another process claimed since, and
  forgets its own copy of them (``on_lost``), so a terminal that moved is judged in one place
  and its old worker raises no offline alarm for it.

Without a snapshot (a vehicle never judged, or a crash before its first save) the state is
rebuilt from the last ``rebuild_window`` of its track.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from store import rule_state

if TYPE_CHECKING:
    import asyncpg

    from alerts.engine import RulesEngine
    from geo.position import Position

log = logging.getLogger(__name__)

#: Snapshots are written as compact JSON text (jsonb in the table).
_to_json = json.JSONEncoder(separators=(",", ":")).encode


@dataclass
class SnapshotStats:
    """Counters, also on /metrics as ``fleetwatch_rule_state_*``."""

    saved: int = 0  # snapshots written
    save_failures: int = 0
    restored: int = 0  # snapshots imported
    rebuilt: int = 0  # vehicles without a snapshot, rebuilt from their track
    replayed: int = 0  # positions replayed after a restore
    lost: int = 0  # vehicles another process took over (forgotten here)


def _newest(state: dict) -> datetime | None:
    t = state.get("newest")
    if not isinstance(t, int | float) or t < 0:
        return None
    return datetime.fromtimestamp(t, UTC)


class StateKeeper:
    """The durable rule state of one worker's :class:`~alerts.engine.RulesEngine`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        engine: RulesEngine,
        *,
        generation: str | None = None,
        worker: int = 0,
        chunk: int = 100,
        rebuild_window: timedelta = timedelta(hours=1),
        on_lost: Callable[[int], bool] | None = None,
        revive: Callable[[Position], Position] | None = None,
    ) -> None:
        self.pool = pool
        self.engine = engine
        #: Shared by all the workers of one ``serve`` (a start-up claims what other runs left).
        self.generation = generation or secrets.token_hex(6)
        self.owner = f"{self.generation}/{worker}/{os.getpid()}"
        self.chunk = chunk
        self.rebuild_window = rebuild_window
        self.on_lost = on_lost
        #: A stored position back in platform terms (the source's edge knows its words).
        self.revive = revive
        self.stats = SnapshotStats()
        self._unsaved: set[int] = set()  # dirty vehicles whose save failed: next time
        self._since: datetime | None = None

    # ------------------------------------------------------------------ restore

    async def claim(self, vehicle_ids: Iterable[int]) -> dict[int, datetime | None]:
        """Take these vehicles over (first sight here) and import their snapshots; per
        vehicle, the fix time to replay its track after (None: no snapshot, rebuild)."""
        snapshots = await rule_state.claim(self.pool, list(vehicle_ids), self.owner)
        return self._import(snapshots)

    async def claim_left(self) -> dict[int, datetime | None]:
        """Start-up: take over every vehicle a process of an earlier run judged (they are all
        gone), and those that reported within ``rebuild_window`` without ever being judged,
        so silent vehicles still go offline on time and open episodes go on."""
        snapshots = await rule_state.claim_left(
            self.pool, self.owner, self.generation + "/", self.rebuild_window
        )
        return self._import(snapshots)

    def _import(self, snapshots: Sequence[rule_state.Snapshot]) -> dict[int, datetime | None]:
        starts: dict[int, datetime | None] = {}
        engine = self.engine
        for snap in snapshots:
            start = None
            if snap.state is not None:
                try:
                    engine.import_state(snap.vehicle_id, snap.state)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning(
                        "rule state of vehicle %s not restored (%s); rebuilding it from its track",
                        snap.vehicle_id, exc,
                    )  # fmt: skip
                else:
                    start = snap.newest
                    self.stats.restored += 1
            if start is None:
                self.stats.rebuilt += 1
            starts[snap.vehicle_id] = start
        return starts

    async def replay(self, starts: dict[int, datetime | None]) -> dict[int, list[Position]]:
        """The stored positions to feed after a restore, per vehicle in fix-time order."""
        found = await rule_state.positions_after(
            self.pool, list(starts.items()), self.rebuild_window
        )
        revive = self.revive
        for positions in found.values():
            self.stats.replayed += len(positions)
            if revive is not None:
                positions[:] = [revive(p) for p in positions]
        return found

    # ------------------------------------------------------------------ snapshots

    async def save(self, vehicle_ids: Iterable[int] | None = None) -> int:
        """Write the snapshots of ``vehicle_ids`` (default: every vehicle changed since the
        last save), a chunk per statement; how many were written. A chunk that fails is
        tried again next time."""
        if vehicle_ids is None:
            todo = self.engine.dirty() | self._unsaved
            self._unsaved = set()
        else:
            todo = set(vehicle_ids)
        pending = list(todo)
        written = 0
        for i in range(0, len(pending), self.chunk):
            part = pending[i : i + self.chunk]
            rows = self._export(part)
            try:
                lost = await rule_state.save(self.pool, self.owner, rows)
            except Exception as exc:
                self.stats.save_failures += 1
                self._unsaved.update(part)
                self._unsaved.update(pending[i + self.chunk :])
                log.warning("saving %d rule states failed (%s); retrying", len(pending) - i, exc)
                break
            written += len(rows) - len(lost)
            self._lose(lost)
        self.stats.saved += written
        return written

    def _export(self, vehicle_ids: Sequence[int]) -> list[tuple[int, str, datetime | None]]:
        rows = []
        export = self.engine.export_state
        for vid in vehicle_ids:
            state = export(vid)
            if state is not None:
                rows.append((vid, _to_json(state), _newest(state)))
        return rows

    # ------------------------------------------------------------------ hand-over

    async def start(self) -> None:
        """Note the database's clock: claims by others are looked for from here on."""
        self._since = await rule_state.now(self.pool)

    async def poll(self) -> list[int]:
        """Forget the vehicles another process claimed since the last look; which."""
        if self._since is None:
            await self.start()
            return []
        assert self._since is not None
        taken, self._since = await rule_state.claimed_by_others(self.pool, self.owner, self._since)
        self._lose(taken)
        return taken

    def _lose(self, vehicle_ids: Iterable[int]) -> None:
        for vid in vehicle_ids:
            if self.on_lost is not None and self.on_lost(vid):
                self.stats.lost += 1
                self._unsaved.discard(vid)
