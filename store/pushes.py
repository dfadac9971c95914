"""The record of commands pushed to terminals (``terminal_pushes``) and their answers.

Rows name the platform command (``alerts.commands``: text, confirm_alarm, set_parameters, ...);
rows written before migration 0008 name the JT/T 808 message id instead.

A push is recorded in two steps: :func:`begin` before the command goes out (so a crash still
leaves a trace of what may have reached the terminal), :func:`finish` with the answer. The
enforcement push compares content hashes with :func:`accepted_hashes` so an unchanged template
is not sent again on every reconnect.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from alerts.commands import ANSWERS, FAILURES, canonical_json, content_hash

#: What a push's ``result`` may say: the terminal's answer, or why there was none.
RESULTS = ANSWERS + FAILURES

_canonical = canonical_json


@dataclass(frozen=True, slots=True)
class Push:
    """One row of ``terminal_pushes``."""

    id: int
    vehicle_id: int
    command: str | None
    msg_id: int | None
    item: str
    content_hash: str
    content: Any
    alert_id: int | None
    serial: int | None
    sent_at: datetime
    result: str | None
    answered_at: datetime | None


_COLUMNS = (
    "id, vehicle_id, command, msg_id, item, content_hash, content::text AS content, alert_id,"
    " serial, sent_at, result, answered_at"
)


def _json(value: Any) -> Any:
    """jsonb as text (asyncpg's default) or already decoded (a pool with a json codec)."""
    return json.loads(value) if isinstance(value, str) else value


def _push(row: asyncpg.Record) -> Push:
    values = dict(row)
    values["content"] = _json(values["content"])
    return Push(**values)


async def begin(
    pool: asyncpg.Pool | asyncpg.Connection,
    vehicle_id: int,
    command: str,
    item: str,
    content: Any,
    *,
    alert_id: int | None = None,
) -> int | None:
    """Record a command (its kind) about to be sent (result NULL); returns the row id, or
    None for an automatic text (item ``text:...``) this alert already has: it is not to be
    sent again (migration 0007: replays and retries must not repeat it)."""
    push_id = await pool.fetchval(
        "INSERT INTO terminal_pushes (vehicle_id, command, item, content_hash, content,"
        " alert_id) VALUES ($1, $2, $3, $4, $5::jsonb, $6) ON CONFLICT DO NOTHING RETURNING id",
        vehicle_id, command, item, content_hash(content), _canonical(content), alert_id,
    )  # fmt: skip
    return None if push_id is None else int(push_id)


async def finish(
    pool: asyncpg.Pool | asyncpg.Connection,
    push_id: int,
    result: str,
    *,
    serial: int | None = None,
    answered_at: datetime | None = None,
) -> None:
    """Complete a push with its outcome (and the serial it went out with, if it did)."""
    if result not in RESULTS:
        raise ValueError(f"push result {result!r}: one of {', '.join(RESULTS)}")
    await pool.execute(
        "UPDATE terminal_pushes SET result = $2, serial = coalesce($3, serial), answered_at = $4"
        " WHERE id = $1",
        push_id, result, serial, answered_at,
    )  # fmt: skip


async def accepted_hashes(
    pool: asyncpg.Pool | asyncpg.Connection, vehicle_id: int
) -> dict[str, str]:
    """item -> content hash of the last push of that item that need not be sent again: the
    terminal accepted it, or its end refused it as invalid (it cannot be said in the terminal's
    protocol, e.g. a polygon too large for one message, and would be refused again)."""
    rows = await pool.fetch(
        """SELECT DISTINCT ON (item) item, content_hash FROM terminal_pushes
           WHERE vehicle_id = $1 AND result IN ('accepted', 'invalid')
           ORDER BY item, sent_at DESC, id DESC""",
        vehicle_id,
    )
    return {r["item"]: r["content_hash"] for r in rows}


async def history(
    pool: asyncpg.Pool | asyncpg.Connection,
    vehicle_id: int | None = None,
    *,
    alert_id: int | None = None,
    limit: int = 100,
) -> list[Push]:
    """Newest first: a vehicle's pushes, or those about one alert."""
    rows = await pool.fetch(
        f"""SELECT {_COLUMNS} FROM terminal_pushes
            WHERE ($1::integer IS NULL OR vehicle_id = $1)
              AND ($2::bigint IS NULL OR alert_id = $2)
            ORDER BY sent_at DESC, id DESC LIMIT $3""",
        vehicle_id, alert_id, limit,
    )  # fmt: skip
    return [_push(r) for r in rows]


#: The ``item`` of the push that confirms alert N to its terminal is this plus N.
CONFIRMATION_ITEM = "alarm_confirmation:"


@dataclass(frozen=True, slots=True)
class Unconfirmed:
    """A terminal alarm acknowledged by a dispatcher and not yet confirmed to its terminal."""

    alert_id: int
    vehicle_id: int
    details: dict[str, Any]


async def unconfirmed_alarms(
    pool: asyncpg.Pool | asyncpg.Connection,
    alarms: Sequence[str],
    within: timedelta = timedelta(days=1),
) -> list[Unconfirmed]:
    """Terminal alarms (named in ``alarms``: those a terminal keeps raising until confirmed)
    acknowledged in the last ``within`` with no confirmation push yet. Attempts that found the
    terminal offline do not count (the alarm is confirmed when it connects again), nor do
    attempts left unanswered for 5 minutes (a server stopped while waiting: a live one has
    given up on the answer long before)."""
    rows = await pool.fetch(
        """SELECT a.id, a.vehicle_id, a.details::text AS details FROM alerts a
           WHERE a.type = 'terminal_alarm' AND a.acknowledged_at IS NOT NULL
             AND a.acknowledged_at > now() - $1::interval
             AND a.details->>'name' = ANY($2::text[])
             AND NOT EXISTS (
                 SELECT 1 FROM terminal_pushes p
                 WHERE p.alert_id = a.id AND p.item = $3 || a.id
                   AND (p.result <> 'offline'
                        OR (p.result IS NULL AND p.sent_at > now() - interval '5 minutes')))
           ORDER BY a.acknowledged_at""",
        within, list(alarms), CONFIRMATION_ITEM,
    )  # fmt: skip
    return [Unconfirmed(r["id"], r["vehicle_id"], _json(r["details"])) for r in rows]


__all__ = [
    "CONFIRMATION_ITEM",
    "RESULTS",
    "Push",
    "Unconfirmed",
    "accepted_hashes",
    "begin",
    "content_hash",
    "finish",
    "history",
    "unconfirmed_alarms",
]
