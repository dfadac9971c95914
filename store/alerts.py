"""Alerts in PostGIS: episode events from the rules, the dispatcher's lifecycle, escalation,
retention and the watchlist (asyncpg).

:meth:`AlertStore.apply` is on the hot path: a batch of :class:`~alerts.model.AlertEvent` goes
to the database as one statement (``alerts_apply``, migration 0002), so it is one round trip and
one transaction however many events it holds, and events apply in order (an open, its updates
and its close may share a batch). It is safe to repeat after a failure whose outcome is unknown:
events are matched on (vehicle, key, start) and on the running episode of (vehicle, key), so a
retried batch neither duplicates an alert nor reopens an ended one.

The lifecycle methods check each step with :func:`alerts.lifecycle.transition` on the row locked
``FOR UPDATE`` and write the row and its audit row in one transaction, so two dispatchers
clicking at once get one success and one clear refusal. JSON columns are sent and read as text,
so the store works whatever jsonb codec the pool's connections have.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any

from alerts.lifecycle import (
    SEVERITY_NAMES,
    STATUSES,
    Action,
    EscalationPolicy,
    Status,
    Transition,
    transition,
)
from alerts.model import RECORD_ONLY, AlertEvent
from geo.plates import normalise_plate

if TYPE_CHECKING:
    import asyncpg

#: Violations and their handling are kept at least 3 years (3 x 365 days + a leap day).
MIN_RETENTION_DAYS = 1096
#: ``list(status="active")``: every status but closed (the dispatcher's working list).
ACTIVE = "active"
SYSTEM = "system"

_COLUMNS = """
    a.id, a.vehicle_id, v.plate, a.type, a.key, a.severity, a.status, a.start_time, a.end_time,
    a.late, a.driver, a.details::text AS details, a.created_at, a.updated_at,
    a.acknowledged_by, a.acknowledged_at, a.handled_by, a.handled_at, a.handling_action,
    a.handling_note, a.closed_by, a.closed_at, a.close_note, a.escalation_level, a.escalated_at,
    a.timeline::text AS timeline, a.reviewed_by, a.reviewed_at, a.review_verdict, a.review_note
"""
ALERT_SELECT = f"SELECT {_COLUMNS} FROM alerts a LEFT JOIN vehicles v ON v.id = a.vehicle_id"

_APPLY = """
SELECT n, alert_id, outcome FROM alerts_apply(
    $1::text[], $2::text[], $3::integer[], $4::text[], $5::timestamptz[], $6::timestamptz[],
    $7::smallint[], $8::boolean[], $9::text[], $10::text[], $11::timestamptz[], $12::boolean[]
) ORDER BY n
"""

#: The columns each step sets besides the status: ($2 by, $3 at, then the step's own).
_UPDATES = {
    Action.ACKNOWLEDGE: "acknowledged_by = $2, acknowledged_at = $3",
    Action.HANDLE: "handled_by = $2, handled_at = $3, handling_action = $4, handling_note = $5",
    Action.CLOSE: "closed_by = $2, closed_at = $3, close_note = $4, "
    # Closing an open alert acknowledges it too (see alerts.lifecycle).
    "acknowledged_by = coalesce(acknowledged_by, $2), "
    "acknowledged_at = coalesce(acknowledged_at, $3)",
    Action.REVIEW: "reviewed_by = $2, reviewed_at = $3, review_verdict = $4, review_note = $5",
}


class AlertError(ValueError):
    """A request about alerts cannot be done as asked (the message says why)."""


class AlertNotFound(AlertError):
    """No alert with that id."""


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


_to_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_json_default).encode


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert: its episode, its lifecycle, its escalation."""

    id: int
    vehicle_id: int
    plate: str | None
    type: str
    key: str
    severity: int
    status: str
    start_time: datetime
    end_time: datetime | None
    late: bool
    driver: str | None
    details: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    handled_by: str | None = None
    handled_at: datetime | None = None
    handling_action: str | None = None
    handling_note: str | None = None
    closed_by: str | None = None
    closed_at: datetime | None = None
    close_note: str | None = None
    escalation_level: int = 0
    escalated_at: datetime | None = None
    #: The incident's steps, oldest first: {"at", "phase", "type", "severity"} (migration 0010).
    timeline: builtins.list[dict[str, Any]] = field(default_factory=builtins.list)
    #: A supervisor's second review of the handling (migration 0012), once.
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None
    review_verdict: str | None = None
    review_note: str | None = None
    #: Set on what a lifecycle call returns when that call acknowledged the alert
    #: (``acknowledge``, or ``close`` of an open alert): answer a terminal alarm with 0x8203.
    newly_acknowledged: bool = field(default=False, compare=False)

    @classmethod
    def from_row(cls, row: asyncpg.Record, newly_acknowledged: bool = False) -> Alert:
        values = dict(row.items())
        values["details"] = json.loads(values["details"]) if values["details"] else {}
        values["timeline"] = json.loads(values["timeline"]) if values.get("timeline") else []
        return cls(**values, newly_acknowledged=newly_acknowledged)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: ISO 8601 times, the severity as number and name."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "newly_acknowledged":
                continue
            value = getattr(self, f.name)
            out[f.name] = value.isoformat() if isinstance(value, datetime) else value
            if f.name == "severity":
                out["severity_name"] = SEVERITY_NAMES.get(value, str(value))
        return out


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of an alert's audit trail."""

    id: int
    alert_id: int
    at: datetime
    actor: str
    action: str
    from_status: str | None
    to_status: str | None
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "alert_id": self.alert_id, "at": self.at.isoformat(),
            "actor": self.actor, "action": self.action, "from_status": self.from_status,
            "to_status": self.to_status, "details": self.details,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Applied:
    """What :meth:`AlertStore.apply_results` did with one event.

    ``outcome``: ``inserted`` (a new alert), ``staged`` (the incident moved to a new stage,
    e.g. a fatigue warning became the alarm: act on it like on a new alert), ``updated``,
    ``closed`` (its episode ended), or ``ignored`` (a retry of an episode already ended:
    nothing changed).
    """

    alert_id: int
    outcome: str


@dataclass(frozen=True, slots=True)
class WatchEntry:
    """A plate on the watchlist (缉查布控)."""

    plate: str
    reason: str
    added_by: str
    added_at: datetime
    active: bool
    removed_by: str | None = None
    removed_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "plate": self.plate, "reason": self.reason, "added_by": self.added_by,
            "added_at": self.added_at.isoformat(), "active": self.active,
            "removed_by": self.removed_by, "removed_at": _iso(self.removed_at),
        }  # fmt: skip


def required_plate(plate: str) -> str:
    """Plates as ``vehicles.plate`` holds them (``geo.plates``); an empty one is refused."""
    plate_n = normalise_plate(plate)
    if not plate_n:
        raise AlertError("plate: required")
    return plate_n


def statuses(status: str | Iterable[str] | None) -> list[str] | None:
    if status is None:
        return None
    wanted = [status] if isinstance(status, str) else list(status)
    out: list[str] = []
    for value in wanted:
        if value == ACTIVE:
            out.extend(s for s in STATUSES if s != Status.CLOSED)
        elif value in STATUSES:
            out.append(value)
        else:
            raise AlertError(f"status {value!r}: one of {', '.join((*STATUSES, ACTIVE))}")
    return out


def _fold(events: Sequence[AlertEvent]) -> tuple[list[AlertEvent], list[tuple[int, bool]]]:
    """Merge each update into the open or update of the same episode just before it in the
    batch (events of other keys may come between), unless it raises the severity (that change
    is audited): a batch of per-fix updates costs the database one event per episode.

    Returns the events to send and, per input event, (its index there, folded or not). The
    caller's events are not modified.
    """
    sent: list[AlertEvent] = []
    host: list[tuple[int, bool]] = []
    last: dict[tuple[int, str], int] = {}
    for e in events:
        episode = (e.vehicle_id, e.key)
        index = last.get(episode)
        if e.phase == "update" and index is not None:
            prior = sent[index]
            if prior.start == e.start and e.severity >= prior.severity and e.type == prior.type:
                sent[index] = dataclasses.replace(
                    prior,
                    details={**prior.details, **e.details},
                    driver=prior.driver or e.driver,
                )
                host.append((index, True))
                continue
        host.append((len(sent), False))
        if e.phase == "close":
            last.pop(episode, None)
        else:
            last[episode] = len(sent)
        sent.append(e)
    return sent, host


class AlertStore:
    """Alerts over an asyncpg pool (or one connection: the CLI's)."""

    def __init__(self, db: asyncpg.Pool | asyncpg.Connection) -> None:
        self._db = db

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:  # a Connection or a pool's proxy of one
        if hasattr(self._db, "acquire"):
            async with self._db.acquire() as conn:
                yield conn
        else:
            yield self._db

    # ------------------------------------------------------------------ episodes (hot path)

    async def apply(self, events: Sequence[AlertEvent]) -> builtins.list[int]:
        """Store a batch of episode events in order; the alert id of each event."""
        return [a.alert_id for a in await self.apply_results(events)]

    async def apply_results(self, events: Sequence[AlertEvent]) -> builtins.list[Applied]:
        """:meth:`apply`, telling per event what happened (send an automatic action to the
        driver only for ``inserted``: a retried batch reports ``ignored`` or ``updated``)."""
        if not events:
            return []
        sent, host = _fold(events)
        columns: tuple[list[Any], ...] = tuple([] for _ in range(12))
        for e in sent:
            for column, value in zip(
                columns,
                (
                    e.phase, e.type, e.vehicle_id, e.key, e.start, e.end, e.severity, e.late,
                    e.driver, _to_json(e.details) if e.details else None, e.at,
                    e.type in RECORD_ONLY,
                ),
                strict=True,
            ):  # fmt: skip
                column.append(value)
        async with self._conn() as conn:
            rows = await conn.fetch(_APPLY, *columns)
        done = [Applied(r["alert_id"], r["outcome"]) for r in rows]
        out = []
        for index, folded in host:
            applied = done[index]
            if folded and applied.outcome != "ignored":
                applied = Applied(applied.alert_id, "updated")
            out.append(applied)
        return out

    # ------------------------------------------------------------------ reading

    async def running(self, vehicle_ids: Iterable[int], key: str) -> dict[int, datetime]:
        """The start of the running episode ``key`` of each of these vehicles that has one."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT vehicle_id, start_time FROM alerts"
                " WHERE vehicle_id = ANY ($1::integer[]) AND key = $2 AND end_time IS NULL",
                list(vehicle_ids),
                key,
            )
        return {r["vehicle_id"]: r["start_time"] for r in rows}

    async def get(self, alert_id: int) -> Alert | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(f"{ALERT_SELECT} WHERE a.id = $1", alert_id)
        return Alert.from_row(row) if row else None

    async def list(
        self,
        status: str | Iterable[str] | None = None,
        plate: str | None = None,
        type: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        vehicle_id: int | None = None,
    ) -> builtins.list[Alert]:
        """Alerts, newest episode first. ``status`` is one status, several, or ``"active"``
        (not closed); ``plate`` matches any plate colour; ``since`` filters on the start."""
        if limit < 1:
            raise AlertError(f"limit {limit}: at least 1")
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"""{ALERT_SELECT}
                WHERE ($1::text[] IS NULL OR a.status = ANY ($1))
                  AND ($2::text IS NULL OR v.plate = $2)
                  AND ($3::text IS NULL OR a.type = $3)
                  AND ($4::timestamptz IS NULL OR a.start_time >= $4)
                  AND ($5::integer IS NULL OR a.vehicle_id = $5)
                ORDER BY a.start_time DESC, a.id DESC
                LIMIT $6""",
                statuses(status),
                required_plate(plate) if plate is not None else None,
                type,
                since,
                vehicle_id,
                limit,
            )
        return [Alert.from_row(r) for r in rows]

    async def record(
        self, alert_id: int, action: str, details: dict[str, Any], actor: str = "system"
    ) -> None:
        """Add an automatic step to the alert's audit trail: what the platform did by itself
        (``auto_text``: a text to the driver; ``terminal_confirm``: 0x8203 to the terminal) and
        the terminal's answer. The status does not change."""
        await self._db.execute(
            "INSERT INTO alert_audit (alert_id, actor, action, details)"
            " VALUES ($1, $2, $3, $4::text::jsonb)",
            alert_id, actor, action, _to_json(details),
        )  # fmt: skip

    async def audit(self, alert_id: int) -> builtins.list[AuditEntry]:
        """The alert's audit trail, oldest first."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                """
                SELECT id, alert_id, at, actor, action, from_status, to_status,
                       details::text AS details
                FROM alert_audit WHERE alert_id = $1 ORDER BY id
                """,
                alert_id,
            )
            if not rows and not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM alerts WHERE id = $1)", alert_id
            ):
                raise AlertNotFound(f"no alert {alert_id}")
        return [
            AuditEntry(**{**dict(r.items()), "details": json.loads(r["details"])}) for r in rows
        ]

    # ------------------------------------------------------------------ lifecycle

    async def acknowledge(self, alert_id: int, by: str, at: datetime | None = None) -> Alert:
        """Acknowledge an open alert. The returned alert (``newly_acknowledged`` set) has what
        a 0x8203 reply needs: ``type``, ``vehicle_id``, ``details["bit"]`` and the 0x0200
        serial the rule put in ``details``."""
        return await self._step(alert_id, Action.ACKNOWLEDGE, by, at)

    async def handle(
        self,
        alert_id: int,
        by: str,
        action: str,
        note: str | None = None,
        at: datetime | None = None,
    ) -> Alert:
        """Record how an acknowledged (or already handled) alert was handled."""
        return await self._step(alert_id, Action.HANDLE, by, at, action, note)

    async def close(
        self, alert_id: int, by: str, note: str | None = None, at: datetime | None = None
    ) -> Alert:
        """Close an alert (a note is required unless it was handled; closing an open alert
        acknowledges it too, see ``newly_acknowledged``)."""
        return await self._step(alert_id, Action.CLOSE, by, at, None, note)

    async def review(
        self, alert_id: int, by: str, verdict: str, note: str, at: datetime | None = None
    ) -> Alert:
        """A supervisor's second review of a handled or closed alert (once; the status stays)."""
        return await self._step(alert_id, Action.REVIEW, by, at, None, note, verdict)

    async def _step(
        self,
        alert_id: int,
        action: Action,
        by: str,
        at: datetime | None,
        handling_action: str | None = None,
        note: str | None = None,
        verdict: str | None = None,
    ) -> Alert:
        at = at or datetime.now(UTC)
        async with self._conn() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT status, reviewed_at IS NOT NULL AS reviewed FROM alerts"
                " WHERE id = $1 FOR UPDATE",
                alert_id,
            )
            if row is None:
                raise AlertNotFound(f"no alert {alert_id}")
            step = transition(
                row["status"], action, by=by, at=at, handling_action=handling_action, note=note,
                alert_id=alert_id, verdict=verdict, reviewed=row["reviewed"],
            )  # fmt: skip
            own = {
                Action.ACKNOWLEDGE: (),
                Action.HANDLE: (step.handling_action, step.note),
                Action.CLOSE: (step.note,),
                Action.REVIEW: (step.verdict, step.note),
            }[action]
            await conn.execute(
                f"UPDATE alerts SET status = $1::text, updated_at = now(), {_UPDATES[action]} "
                f"WHERE id = ${len(own) + 4}",
                step.to_status.value,
                step.by,
                step.at,
                *own,
                alert_id,
            )
            await self._audit(conn, alert_id, step)
            row = await conn.fetchrow(f"{ALERT_SELECT} WHERE a.id = $1", alert_id)
        assert row is not None  # updated above, in this transaction
        return Alert.from_row(row, newly_acknowledged=step.acknowledges)

    @staticmethod
    async def _audit(conn: asyncpg.Connection, alert_id: int, step: Transition) -> None:
        details: dict[str, Any] = {
            k: v
            for k, v in (
                ("handling_action", step.handling_action),
                ("note", step.note),
                ("verdict", step.verdict),
            )
            if v is not None
        }
        if step.acknowledges and step.action is not Action.ACKNOWLEDGE:
            details["acknowledged"] = True
        await conn.execute(
            """
            INSERT INTO alert_audit (alert_id, at, actor, action, from_status, to_status, details)
            VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb)
            """,
            alert_id,
            step.at,
            step.by,
            step.action.value,
            step.from_status.value,
            step.to_status.value,
            _to_json(details),
        )

    # ------------------------------------------------------------------ escalation

    async def escalate_due(self, now: datetime, policy: EscalationPolicy) -> builtins.list[Alert]:
        """Raise the escalation level of every open (unacknowledged) alert that is due by
        ``now``; returns those escalated, with their new level (call it every few seconds).

        An alert overdue by several limits (the server was down) jumps to the level due, with
        one audit row. Rows another process is escalating are skipped, not waited for.
        """
        shortest = policy.shortest
        if shortest is None:
            return []
        async with self._conn() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                SELECT id, type, severity, created_at, escalation_level FROM alerts
                WHERE status = 'open' AND escalation_level < $1 AND created_at <= $2
                ORDER BY created_at
                FOR UPDATE SKIP LOCKED
                """,
                policy.max_level,
                now - shortest,
            )
            ids: list[int] = []
            levels: list[int] = []
            previous: list[int] = []
            for r in rows:
                level = policy.level_due(r["type"], r["severity"], r["created_at"], now)
                if level > r["escalation_level"]:
                    ids.append(r["id"])
                    levels.append(level)
                    previous.append(r["escalation_level"])
            if not ids:
                return []
            await conn.execute(
                """
                WITH due AS (
                    SELECT * FROM unnest($1::bigint[], $2::smallint[], $3::smallint[])
                        AS u (id, level, previous)
                ), raised AS (
                    UPDATE alerts a SET escalation_level = due.level, escalated_at = $4,
                                        updated_at = now()
                    FROM due WHERE a.id = due.id
                )
                INSERT INTO alert_audit (alert_id, at, actor, action, from_status, to_status,
                                         details)
                SELECT id, $4, $5, 'escalate', 'open', 'open',
                       jsonb_build_object('level', level, 'from_level', previous)
                FROM due
                """,
                ids,
                levels,
                previous,
                now,
                SYSTEM,
            )
            found = await conn.fetch(f"{ALERT_SELECT} WHERE a.id = ANY ($1) ORDER BY a.id", ids)
        return [Alert.from_row(r) for r in found]

    # ------------------------------------------------------------------ retention

    async def purge(self, now: datetime, retention_days: int = MIN_RETENTION_DAYS) -> int:
        """Delete closed alerts (and their audit trails) whose episode ended and which were
        closed more than ``retention_days`` before ``now``; returns how many.

        Refuses a retention under 3 years, which the regulation forbids. Alerts not closed are
        kept whatever their age. The database enforces the same (a trigger), so ``now`` in the
        future cannot get round it either.
        """
        if retention_days < MIN_RETENTION_DAYS:
            raise AlertError(
                f"retention_days={retention_days}: violations and their handling must be kept "
                f"at least 3 years ({MIN_RETENTION_DAYS} days)"
            )
        cutoff = now - timedelta(days=retention_days)
        async with self._conn() as conn:
            return await conn.fetchval(
                """
                WITH gone AS (
                    DELETE FROM alerts
                    WHERE status = 'closed'
                      AND closed_at < least($1, now() - interval '3 years')
                      AND coalesce(end_time, start_time) < least($1, now() - interval '3 years')
                    RETURNING 1
                )
                SELECT count(*) FROM gone
                """,
                cutoff,
            )

    # ------------------------------------------------------------------ watchlist

    async def watchlist_add(self, plate: str, reason: str, by: str) -> WatchEntry:
        """Put a plate on the watchlist (again: a removed plate is reactivated, new reason)."""
        reason_n, by_n = reason.strip(), by.strip()
        if not reason_n:
            raise AlertError("watchlist: a reason is required")
        if not by_n:
            raise AlertError("watchlist: who adds the plate is required")
        async with self._conn() as conn:
            row = await conn.fetchrow(
                """
                INSERT INTO watchlist (plate, reason, added_by) VALUES ($1, $2, $3)
                ON CONFLICT (plate) DO UPDATE SET
                    reason = excluded.reason, added_by = excluded.added_by, added_at = now(),
                    active = true, removed_by = NULL, removed_at = NULL
                RETURNING *
                """,
                required_plate(plate),
                reason_n,
                by_n,
            )
        return WatchEntry(**dict(row.items()))

    async def watchlist_remove(self, plate: str, by: str) -> WatchEntry:
        """Take a plate off the watchlist (kept as inactive, with who and when)."""
        plate_n = required_plate(plate)
        async with self._conn() as conn:
            row = await conn.fetchrow(
                """
                UPDATE watchlist SET active = false, removed_by = $2, removed_at = now()
                WHERE plate = $1 AND active RETURNING *
                """,
                plate_n,
                by.strip() or SYSTEM,
            )
        if row is None:
            raise AlertError(f"plate {plate_n} is not on the watchlist")
        return WatchEntry(**dict(row.items()))

    async def watchlist_list(self, include_removed: bool = False) -> builtins.list[WatchEntry]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT * FROM watchlist WHERE active OR $1 ORDER BY plate", include_removed
            )
        return [WatchEntry(**dict(r.items())) for r in rows]

    async def watchlist_fingerprint(self) -> tuple[Any, ...]:
        """Changes whenever a plate is added, re-added (new reason) or removed."""
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE active), max(greatest(added_at, removed_at))"
                " FROM watchlist"
            )
        assert row is not None  # an aggregate always returns one row
        return tuple(row)

    async def watchlist_reasons(self) -> dict[str, str]:
        """Active plates and their reasons, for ``RulesEngine.set_watchlist``."""
        return {e.plate: e.reason for e in await self.watchlist_list()}
