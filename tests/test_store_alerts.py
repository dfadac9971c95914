"""store.alerts on a real PostGIS database: episode events (matching, batches, retries), the
lifecycle with its audit trail, escalation with an explicit clock, retention, the watchlist."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from alerts.lifecycle import EscalationPolicy, LifecycleError
from alerts.model import (
    CRITICAL,
    HIGH,
    LOW,
    MEDIUM,
    OFFLINE,
    TERMINAL_ALARM,
    AlertEvent,
)
from store.alerts import MIN_RETENTION_DAYS, AlertError, AlertNotFound, AlertStore, _fold
from store.vehicles import add_vehicle, new_vehicle
from tests.aio import aio_test

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
S = timedelta(seconds=1)


@asynccontextmanager
async def database(url: str) -> AsyncIterator[tuple[asyncpg.Pool, AlertStore, list[int]]]:
    """A pool on the test database, its AlertStore, and two provisioned vehicles."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=3)
    try:
        async with pool.acquire() as conn:
            ids = [
                (await add_vehicle(conn, new_vehicle(plate, "coach", "北京客运", phone)))["id"]
                for plate, phone in (("京A12345", "13900000001"), ("沪C 777", "13900000002"))
            ]
        yield pool, AlertStore(pool), ids
    finally:
        await pool.close()


def ev(phase: str, vehicle: int, key: str, start: datetime, **kw: Any) -> AlertEvent:
    kw.setdefault("type", key.split(":")[0])
    return AlertEvent(phase=phase, vehicle_id=vehicle, key=key, start=start, **kw)  # type: ignore[arg-type]


async def audit_actions(store: AlertStore, alert_id: int) -> list[str]:
    return [a.action for a in await store.audit(alert_id)]


async def count(pool: asyncpg.Pool, table: str) -> int:
    return await pool.fetchval(f"SELECT count(*) FROM {table}")


def test_fold_merges_per_fix_updates_of_an_episode() -> None:
    events = [
        ev("open", 1, "speeding", T0, severity=MEDIUM, details={"max_kmh": 66}),
        ev("open", 2, "speeding", T0, severity=LOW),
        ev("update", 1, "speeding", T0, severity=MEDIUM, details={"max_kmh": 68}, driver="张三"),
        ev("update", 2, "speeding", T0, severity=LOW, details={"max_kmh": 61}),
        ev("update", 1, "speeding", T0, severity=LOW, details={"max_kmh": 69}),
        ev("update", 1, "speeding", T0, severity=HIGH, details={"max_kmh": 74}),  # audited
        ev("update", 1, "speeding", T0, severity=HIGH, details={"max_kmh": 75}),
        ev("close", 1, "speeding", T0, end=T0 + 60 * S),
        ev("update", 1, "speeding", T0, details={"late": 1}),  # after its close: not folded
        ev("update", 2, "speeding", T0 + S, details={"other": 1}),  # another start
    ]
    sent, host = _fold(events)
    assert [(e.phase, e.vehicle_id, e.severity, e.details) for e in sent] == [
        ("open", 1, MEDIUM, {"max_kmh": 69}),
        ("open", 2, LOW, {"max_kmh": 61}),
        ("update", 1, HIGH, {"max_kmh": 75}),
        ("close", 1, MEDIUM, {}),
        ("update", 1, MEDIUM, {"late": 1}),
        ("update", 2, MEDIUM, {"other": 1}),
    ]
    assert sent[0].driver == "张三"
    assert host == [
        (0, False), (1, False), (0, True), (1, True), (0, True), (2, False), (2, True),
        (3, False), (4, False), (5, False),
    ]  # fmt: skip
    assert events[0].details == {"max_kmh": 66} and events[0].driver is None  # untouched


@aio_test
async def test_open_update_close_match_and_merge(db_url: str) -> None:
    async with database(db_url) as (_pool, store, (v1, v2)):
        opened = await store.apply_results(
            [
                ev("open", v1, "speeding", T0, severity=MEDIUM,
                   details={"max_kmh": 66, "limit": 60}),
                ev("open", v2, "speeding", T0 + 5 * S, severity=LOW, driver="张三"),
            ]
        )  # fmt: skip
        assert [a.outcome for a in opened] == ["inserted", "inserted"]
        a1, a2 = (a.alert_id for a in opened)
        assert a1 != a2  # same key, another vehicle: another episode

        ids = await store.apply(
            [
                ev("update", v1, "speeding", T0, severity=HIGH, details={"max_kmh": 73}),
                ev("update", v1, "speeding", T0, severity=LOW, details={"max_kmh": 71}),
                ev("close", v1, "speeding", T0, end=T0 + 40 * S, severity=LOW,
                   details={"duration_s": 40}),
            ]
        )  # fmt: skip
        assert ids == [a1, a1, a1]
        alert = await store.get(a1)
        assert alert is not None
        assert (alert.plate, alert.type, alert.key, alert.status) == (
            "京A12345", "speeding", "speeding", "open"
        )  # fmt: skip
        assert (alert.start_time, alert.end_time) == (T0, T0 + 40 * S)
        assert alert.severity == HIGH  # the most urgent seen, not the last
        assert alert.details == {"max_kmh": 71, "limit": 60, "duration_s": 40}
        assert alert.late is False and alert.driver is None
        audit = await store.audit(a1)
        assert [(a.actor, a.action) for a in audit] == [
            ("system", "episode_open"), ("system", "severity"), ("system", "episode_close"),
        ]  # fmt: skip
        assert audit[1].details == {"from": MEDIUM, "to": HIGH}
        assert audit[2].details["details"] == {"duration_s": 40}
        assert audit[2].details["end"].startswith("2025-03-01T08:00:40")

        # A new episode of the same key after the close is a new alert.
        (a3,) = await store.apply([ev("open", v1, "speeding", T0 + 300 * S)])
        assert a3 not in (a1, a2)
        other = await store.get(a2)
        assert other is not None and other.driver == "张三" and other.end_time is None


@aio_test
async def test_a_whole_episode_in_one_batch_and_retries(db_url: str) -> None:
    async with database(db_url) as (pool, store, (v1, _v2)):
        key = "terminal_alarm:0"
        batch = [
            ev("open", v1, key, T0, severity=CRITICAL, details={"bit": 0, "serial": 17}),
            ev("update", v1, key, T0, severity=CRITICAL, details={"serial": 18}),
            ev("close", v1, key, T0, end=T0 + 30 * S, severity=CRITICAL),
            ev("open", v1, key, T0 + 60 * S, severity=CRITICAL, details={"bit": 0, "serial": 25}),
        ]
        first = await store.apply_results(batch)
        assert [a.outcome for a in first] == ["inserted", "updated", "closed", "inserted"]
        assert first[0].alert_id == first[1].alert_id == first[2].alert_id != first[3].alert_id
        alerts_before, audits_before = await count(pool, "alerts"), await count(pool, "alert_audit")
        assert (alerts_before, audits_before) == (2, 3)

        # The caller did not learn the outcome and sends the batch again: nothing new.
        again = await store.apply_results(batch)
        assert [a.alert_id for a in again] == [a.alert_id for a in first]
        assert [a.outcome for a in again] == ["ignored", "ignored", "ignored", "updated"]
        assert (await count(pool, "alerts"), await count(pool, "alert_audit")) == (2, 3)
        ended = await store.get(first[0].alert_id)
        assert ended is not None and ended.details == {"bit": 0, "serial": 18}
        assert ended.end_time == T0 + 30 * S

        # A retried close of the second episode closes it once.
        close = [ev("close", v1, key, T0 + 60 * S, end=T0 + 90 * S, severity=CRITICAL)]
        assert [a.outcome for a in await store.apply_results(close)] == ["closed"]
        assert [a.outcome for a in await store.apply_results(close)] == ["ignored"]
        assert await audit_actions(store, first[3].alert_id) == ["episode_open", "episode_close"]


@aio_test
async def test_open_for_a_running_key_updates_it(db_url: str) -> None:
    """A restarted rules engine re-detects an ongoing episode with a later start."""
    async with database(db_url) as (pool, store, (v1, _v2)):
        (first,) = await store.apply([ev("open", v1, OFFLINE, T0, details={"minutes": 10})])
        again = await store.apply_results(
            [ev("open", v1, OFFLINE, T0 + 600 * S, details={"minutes": 20})]
        )
        assert again[0].alert_id == first and again[0].outcome == "updated"
        alert = await store.get(first)
        assert alert is not None
        assert alert.start_time == T0 and alert.details == {"minutes": 20}
        assert await count(pool, "alerts") == 1


@aio_test
async def test_concurrent_opens_of_one_episode_make_one_alert(db_url: str) -> None:
    """Two workers (serve --workers 2, a terminal that reconnected) open the same key at once."""
    async with database(db_url) as (pool, store, (v1, _v2)):
        async with pool.acquire() as conn:
            outer = conn.transaction()
            await outer.start()
            (first,) = await AlertStore(conn).apply([ev("open", v1, OFFLINE, T0)])
            other = asyncio.ensure_future(
                store.apply_results([ev("open", v1, OFFLINE, T0 + 5 * S, details={"n": 2})])
            )
            await asyncio.sleep(0.3)
            assert not other.done()  # waits on the uncommitted episode, then merges into it
            await outer.commit()
        (merged,) = await other
        assert (merged.alert_id, merged.outcome) == (first, "updated")
        assert await count(pool, "alerts") == 1


@aio_test
async def test_update_or_close_without_open_records_the_episode(db_url: str) -> None:
    async with database(db_url) as (_pool, store, (v1, _v2)):
        results = await store.apply_results(
            [
                ev("update", v1, "speeding", T0, details={"max_kmh": 90}),
                ev("close", v1, "route_deviation:7", T0, end=T0 - 5 * S, late=True, driver="李四"),
            ]
        )
        assert [a.outcome for a in results] == ["inserted", "inserted"]
        running, closed = [await store.get(a.alert_id) for a in results]
        assert running is not None and running.end_time is None
        assert closed is not None
        assert closed.end_time == T0  # an end before the start is clamped to the start
        assert closed.late is True and closed.driver == "李四" and closed.status == "open"
        assert await audit_actions(store, closed.id) == ["episode_open", "episode_close"]
        assert await store.apply([]) == []


@aio_test
async def test_lifecycle_with_audit(db_url: str) -> None:
    async with database(db_url) as (_pool, store, (v1, _v2)):
        (a,) = await store.apply(
            [ev("open", v1, "terminal_alarm:0", T0, type=TERMINAL_ALARM, severity=CRITICAL,
                details={"bit": 0, "name": "emergency", "serial": 4711})]
        )  # fmt: skip

        with pytest.raises(LifecycleError, match=f"alert {a} is open: acknowledge it before"):
            await store.handle(a, "王调度", "phone_call")
        with pytest.raises(LifecycleError, match="closing it needs a note"):
            await store.close(a, "王调度")
        with pytest.raises(LifecycleError, match="who does it is required"):
            await store.acknowledge(a, " ")
        assert await audit_actions(store, a) == ["episode_open"]  # refusals change nothing

        acked = await store.acknowledge(a, "王调度", at=T0 + 20 * S)
        # What C2 needs to answer the terminal with 0x8203.
        assert acked.newly_acknowledged is True
        assert (acked.type, acked.vehicle_id, acked.details["bit"], acked.details["serial"]) == (
            TERMINAL_ALARM, v1, 0, 4711,
        )  # fmt: skip
        assert (acked.status, acked.acknowledged_by, acked.acknowledged_at) == (
            "acknowledged", "王调度", T0 + 20 * S,
        )  # fmt: skip
        with pytest.raises(LifecycleError, match=f"alert {a} is acknowledged: it was ack"):
            await store.acknowledge(a, "赵")

        handled = await store.handle(a, "王调度", "text_sent", "请立即停车", at=T0 + 60 * S)
        assert handled.newly_acknowledged is False
        assert (handled.status, handled.handling_action, handled.handling_note) == (
            "handled", "text_sent", "请立即停车",
        )  # fmt: skip
        second = await store.handle(a, "赵安全员", "reported", at=T0 + 900 * S)
        assert (second.handled_by, second.handling_action, second.handling_note) == (
            "赵安全员", "reported", None,
        )  # fmt: skip
        closed = await store.close(a, "赵安全员", at=T0 + 1000 * S)
        assert (closed.status, closed.closed_by, closed.closed_at, closed.close_note) == (
            "closed", "赵安全员", T0 + 1000 * S, None,
        )  # fmt: skip
        assert closed.acknowledged_by == "王调度"  # kept
        with pytest.raises(LifecycleError, match="closed alerts are final"):
            await store.close(a, "赵安全员", "again")

        audit = await store.audit(a)
        assert [(x.action, x.actor, x.from_status, x.to_status, x.at) for x in audit[1:]] == [
            ("acknowledge", "王调度", "open", "acknowledged", T0 + 20 * S),
            ("handle", "王调度", "acknowledged", "handled", T0 + 60 * S),
            ("handle", "赵安全员", "handled", "handled", T0 + 900 * S),
            ("close", "赵安全员", "handled", "closed", T0 + 1000 * S),
        ]
        assert audit[2].details == {"handling_action": "text_sent", "note": "请立即停车"}
        assert audit[3].details == {"handling_action": "reported"}

        for call in (store.acknowledge(999, "x"), store.close(999, "x", "n"), store.audit(999)):
            with pytest.raises(AlertNotFound, match="no alert 999"):
                await call
        assert await store.get(999) is None


@aio_test
async def test_closing_an_open_alert_acknowledges_it(db_url: str) -> None:
    async with database(db_url) as (_pool, store, (v1, _v2)):
        (a,) = await store.apply([ev("open", v1, "geofence_dwell:3", T0, severity=LOW)])
        closed = await store.close(a, "王调度", "GPS drift, vehicle parked", at=T0 + 30 * S)
        assert closed.newly_acknowledged is True
        assert (closed.acknowledged_by, closed.acknowledged_at) == ("王调度", T0 + 30 * S)
        assert closed.close_note == "GPS drift, vehicle parked"
        audit = await store.audit(a)
        assert (audit[-1].action, audit[-1].from_status, audit[-1].details) == (
            "close", "open", {"note": "GPS drift, vehicle parked", "acknowledged": True},
        )  # fmt: skip
        # The episode still ends later: the close event matches the closed alert's episode.
        (same,) = await store.apply([ev("close", v1, "geofence_dwell:3", T0, end=T0 + 99 * S)])
        assert same == a
        after = await store.get(a)
        assert after is not None and after.end_time == T0 + 99 * S and after.status == "closed"


@aio_test
async def test_concurrent_acknowledgements_one_wins(db_url: str) -> None:
    async with database(db_url) as (pool, store, (v1, _v2)):
        (a,) = await store.apply([ev("open", v1, "terminal_alarm:0", T0, severity=CRITICAL)])
        # Dispatcher 甲's acknowledgement is written but not committed yet when 乙 clicks.
        async with pool.acquire() as conn:
            outer = conn.transaction()
            await outer.start()
            await AlertStore(conn).acknowledge(a, "甲")
            second = asyncio.ensure_future(store.acknowledge(a, "乙"))
            await asyncio.sleep(0.3)
            assert not second.done()  # waits for the row instead of reading a stale status
            await outer.commit()
        with pytest.raises(LifecycleError, match="it was acknowledged already"):
            await second
        alert = await store.get(a)
        assert alert is not None and alert.acknowledged_by == "甲"
        assert await audit_actions(store, a) == ["episode_open", "acknowledge"]

        # Two at once through the pool: one wins, one is told why.
        (b,) = await store.apply([ev("open", v1, "terminal_alarm:3", T0, severity=CRITICAL)])
        results = await asyncio.gather(
            store.acknowledge(b, "甲"), store.acknowledge(b, "乙"), return_exceptions=True
        )
        assert sorted(type(r).__name__ for r in results) == ["Alert", "LifecycleError"]


@aio_test
async def test_escalation_with_an_explicit_clock(db_url: str) -> None:
    async with database(db_url) as (pool, store, (v1, v2)):
        ids = await store.apply(
            [
                ev("open", v1, "terminal_alarm:0", T0, type=TERMINAL_ALARM, severity=CRITICAL),
                ev("open", v1, "speeding", T0, severity=HIGH),
                ev("open", v2, "geofence_dwell:1", T0, type="geofence_dwell", severity=LOW),
                ev("open", v2, "terminal_alarm:0", T0, type=TERMINAL_ALARM, severity=CRITICAL),
            ]
        )
        sos, speeding, fence, acked = ids
        await pool.execute("UPDATE alerts SET created_at = $1", T0)  # raised at T0
        await store.acknowledge(acked, "王调度")
        policy = EscalationPolicy()

        assert await store.escalate_due(T0 + 59 * S, policy) == []
        first = await store.escalate_due(T0 + 60 * S, policy)
        assert [(x.id, x.escalation_level, x.escalated_at) for x in first] == [
            (sos, 1, T0 + 60 * S)
        ]
        assert await store.escalate_due(T0 + 61 * S, policy) == []  # nothing new due

        # Five minutes on: SOS has passed levels 2..5 (capped at 3), speeding reaches 1.
        later = await store.escalate_due(T0 + 300 * S, policy)
        assert sorted((x.id, x.escalation_level) for x in later) == [(sos, 3), (speeding, 1)]
        last = await store.escalate_due(T0 + 3600 * S, policy)
        assert [(x.id, x.escalation_level) for x in last] == [(speeding, 3)]
        got = await store.get(speeding)
        assert got is not None and got.escalation_level == 3
        low = await store.get(fence)
        assert low is not None and low.escalation_level == 0  # LOW never escalates
        a = await store.get(acked)
        assert a is not None and a.escalation_level == 0  # acknowledged in time

        audit = [x for x in await store.audit(sos) if x.action == "escalate"]
        assert [(x.actor, x.at, x.details) for x in audit] == [
            ("system", T0 + 60 * S, {"level": 1, "from_level": 0}),
            ("system", T0 + 300 * S, {"level": 3, "from_level": 1}),
        ]
        # Acknowledging stops it; nothing is due any more.
        await store.acknowledge(speeding, "王调度")
        await store.acknowledge(sos, "王调度")
        assert await store.escalate_due(T0 + 86400 * S, policy) == []

        # A policy under which nothing escalates does not even query.
        never = EscalationPolicy(by_severity={CRITICAL: None, HIGH: None, MEDIUM: None, LOW: None})
        assert await store.escalate_due(T0 + 86400 * S, never) == []


@aio_test
async def test_escalation_per_type_override(db_url: str) -> None:
    async with database(db_url) as (pool, store, (v1, _v2)):
        sos, speed = await store.apply(
            [
                ev("open", v1, "terminal_alarm:0", T0, type=TERMINAL_ALARM, severity=HIGH),
                ev("open", v1, "speeding", T0, severity=HIGH),
            ]
        )
        await pool.execute("UPDATE alerts SET created_at = $1", T0)
        policy = EscalationPolicy(by_type={(TERMINAL_ALARM, HIGH): 30 * S}, max_level=2)
        due = await store.escalate_due(T0 + 30 * S, policy)
        assert [(x.id, x.escalation_level) for x in due] == [(sos, 1)]
        due = await store.escalate_due(T0 + 300 * S, policy)
        assert sorted((x.id, x.escalation_level) for x in due) == [(sos, 2), (speed, 1)]


@aio_test
async def test_retention_keeps_three_years_and_everything_not_closed(db_url: str) -> None:
    now = datetime.now(UTC)
    old = now - timedelta(days=4 * 365)
    recent = now - timedelta(days=2 * 365)
    async with database(db_url) as (pool, store, (v1, v2)):
        expired, young, old_open, old_acked = await store.apply(
            [
                ev("close", v1, "speeding", old, end=old + 60 * S),
                ev("close", v1, "fatigue_continuous", recent, end=recent + 60 * S),
                ev("open", v2, "offline", old),
                ev("close", v2, "speeding", old, end=old + 60 * S),
            ]
        )
        await store.close(expired, "王调度", "old, handled on paper", at=old + 120 * S)
        await store.close(young, "王调度", "false alarm", at=recent + 120 * S)
        await store.acknowledge(old_acked, "王调度", at=old + 120 * S)

        for days in (0, 365, MIN_RETENTION_DAYS - 1):
            with pytest.raises(AlertError, match="must be kept at least 3 years"):
                await store.purge(now, retention_days=days)
        audits = await count(pool, "alert_audit")
        assert await store.purge(now) == 1
        remaining = {r["id"] for r in await pool.fetch("SELECT id FROM alerts")}
        assert remaining == {young, old_open, old_acked}
        assert await pool.fetchval(
            "SELECT count(*) FROM alert_audit WHERE alert_id = $1", expired
        ) == 0  # fmt: skip
        assert await count(pool, "alert_audit") == audits - 3  # open, close (episode), close
        assert await store.purge(now) == 0
        # A clock far in the future does not get round the 3 years either.
        assert await store.purge(now + timedelta(days=3650)) == 0

        # The database itself refuses to lose a young or unclosed alert, or to edit the audit.
        for alert_id in (young, old_open, old_acked):
            with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="kept at least"):
                await pool.execute("DELETE FROM alerts WHERE id = $1", alert_id)
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="cannot be changed"):
            await pool.execute("UPDATE alert_audit SET actor = 'nobody'")
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="cannot be changed"):
            await pool.execute("DELETE FROM alert_audit WHERE alert_id = $1", young)


@aio_test
async def test_list_filters_and_json(db_url: str) -> None:
    async with database(db_url) as (_pool, store, (v1, v2)):
        a, b, c = await store.apply(
            [
                ev("open", v1, "speeding", T0, severity=HIGH, details={"max_kmh": 75}),
                ev("close", v2, "speeding", T0 + 60 * S, end=T0 + 90 * S),
                ev("open", v2, "terminal_alarm:0", T0 + 120 * S, type=TERMINAL_ALARM),
            ]
        )
        await store.acknowledge(c, "王调度")
        await store.close(b, "王调度", "duplicate")

        async def ids(**kw: Any) -> list[int]:
            return [x.id for x in await store.list(**kw)]

        assert await ids() == [c, b, a]  # newest episode first
        assert await ids(status="open") == [a]
        assert await ids(status="active") == [c, a]
        assert await ids(status=["closed", "acknowledged"]) == [c, b]
        assert await ids(plate=" 沪c 777 ") == [c, b]
        assert await ids(plate="京A12345", type="speeding") == [a]
        assert await ids(type=TERMINAL_ALARM) == [c]
        assert await ids(since=T0 + 60 * S) == [c, b]
        assert await ids(limit=1) == [c]
        assert await ids(vehicle_id=v1) == [a]
        assert await ids(plate="京Z0") == []
        with pytest.raises(AlertError, match="status 'new': one of open, acknowledged"):
            await store.list(status="new")
        with pytest.raises(AlertError, match="limit 0"):
            await store.list(limit=0)

        (first,) = await store.list(plate="京A12345")
        data = first.to_json()
        assert data["plate"] == "京A12345" and data["severity_name"] == "high"
        assert data["start_time"] == "2025-03-01T08:00:00+00:00" and data["end_time"] is None
        assert data["details"] == {"max_kmh": 75} and "newly_acknowledged" not in data

        # The store works over a single connection too (as the CLI uses it).
        conn = await asyncpg.connect(db_url)
        try:
            assert [x.id for x in await AlertStore(conn).list(status="open")] == [a]
        finally:
            await conn.close()


@aio_test
async def test_watchlist(db_url: str) -> None:
    async with database(db_url) as (pool, store, _ids):
        entry = await store.watchlist_add(" 京a12345 ", "涉嫌套牌", "公安 李")
        assert (entry.plate, entry.reason, entry.added_by, entry.active) == (
            "京A12345", "涉嫌套牌", "公安 李", True,
        )  # fmt: skip
        await store.watchlist_add("沪C 777", "逾期未检验", "王调度")
        assert await store.watchlist_reasons() == {"京A12345": "涉嫌套牌", "沪C777": "逾期未检验"}

        removed = await store.watchlist_remove("京A12345", "公安 李")
        assert removed.active is False and removed.removed_by == "公安 李"
        assert removed.removed_at is not None
        assert [e.plate for e in await store.watchlist_list()] == ["沪C777"]
        assert [e.plate for e in await store.watchlist_list(include_removed=True)] == [
            "京A12345", "沪C777",
        ]  # fmt: skip
        with pytest.raises(AlertError, match="plate 京A12345 is not on the watchlist"):
            await store.watchlist_remove("京a12345", "x")

        again = await store.watchlist_add("京A12345", "布控续期", "公安 王")
        assert (again.active, again.reason, again.removed_at) == (True, "布控续期", None)
        assert await count(pool, "watchlist") == 2
        for plate, reason, by, message in (
            ("", "r", "b", "plate: required"),
            ("京A1", " ", "b", "a reason is required"),
            ("京A1", "r", "", "who adds the plate is required"),
        ):
            with pytest.raises(AlertError, match=message):
                await store.watchlist_add(plate, reason, by)


@aio_test
async def test_an_incident_is_one_alert_through_its_stages(db_url: str) -> None:
    """Fatigue warning -> escalation -> alarm under one key: one alert whose type follows the
    stage, severity the most urgent, a timeline of every stage with its moment; 'staged' once
    per stage (a retried batch says 'updated': no second text); instants are stored closed."""
    key = f"fatigue:{int(T0.timestamp())}"
    batch = [
        ev("open", 1, key, T0, type="fatigue_warning", severity=LOW),
        ev("update", 1, key, T0, type="fatigue_escalation", severity=HIGH, at=T0 + 900 * S,
           details={"fatigue_escalation_at": "x"}),
    ]  # fmt: skip
    async with database(db_url) as (_pool, store, (v1, _v2)):
        for e in batch:
            e.vehicle_id = v1
        first = await store.apply_results(batch)
        assert [a.outcome for a in first] == ["inserted", "staged"]
        again = await store.apply_results(batch)
        assert [a.outcome for a in again] == ["updated", "updated"]
        alarm = ev("update", v1, key, T0, type="fatigue_continuous", severity=HIGH,
                   at=T0 + 1800 * S)  # fmt: skip
        rest = ev("close", v1, key, T0, type="fatigue_continuous", severity=HIGH,
                  end=T0 + 2400 * S)  # fmt: skip
        assert [a.outcome for a in await store.apply_results([alarm, rest])] == [
            "staged", "closed",
        ]  # fmt: skip
        alert = await store.get(first[0].alert_id)
        assert alert is not None and alert.type == "fatigue_continuous"
        assert alert.severity == HIGH and alert.end_time == T0 + 2400 * S
        steps = [(s["phase"], s["type"], datetime.fromisoformat(s["at"])) for s in alert.timeline]
        assert steps == [
            ("open", "fatigue_warning", T0),
            ("update", "fatigue_escalation", T0 + 900 * S),
            ("update", "fatigue_continuous", T0 + 1800 * S),
            ("close", "fatigue_continuous", T0 + 2400 * S),
        ]
        assert alert.status == "open" and len(await store.list()) == 1
        (enter,) = await store.apply([ev("open", v1, "geofence_enter:3", T0, severity=LOW, end=T0)])
        recorded = await store.get(enter)
        assert recorded is not None and recorded.status == "closed"
        assert [a.id for a in await store.list(status="active")] == [alert.id]
