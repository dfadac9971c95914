"""``fleetwatch alerts ...`` and ``fleetwatch watchlist ...`` end to end, through ``main([...])``
in a worker thread (see tests/test_cli_db_vehicles.py for why)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from alerts.model import CRITICAL, HIGH, TERMINAL_ALARM, AlertEvent
from fleetwatch.cli import main
from store.alerts import AlertStore
from store.vehicles import add_vehicle, new_vehicle
from tests.aio import aio_test

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return status, out, err


async def seed(url: str) -> list[int]:
    """Two vehicles; a speeding episode (ended), an SOS (running), a fence alert (other car)."""
    conn = await asyncpg.connect(url)
    try:
        v1 = (await add_vehicle(conn, new_vehicle("京A12345", "coach", "北京客运", "139001")))["id"]
        v2 = (await add_vehicle(conn, new_vehicle("沪C 777", "hazmat", "沪危运", "139002")))["id"]
        return await AlertStore(conn).apply(
            [
                AlertEvent("open", "speeding", v1, "speeding", T0, severity=HIGH,
                           details={"max_kmh": 75.5, "limit_kmh": 60}),
                AlertEvent("close", "speeding", v1, "speeding", T0, end=T0 + timedelta(seconds=40),
                           severity=HIGH, details={"duration_s": 40}),
                AlertEvent("open", TERMINAL_ALARM, v1, "terminal_alarm:0",
                           T0 + timedelta(minutes=5), severity=CRITICAL,
                           details={"bit": 0, "name": "emergency", "serial": 99}),
                AlertEvent("open", "geofence_dwell", v2, "geofence_dwell:3",
                           T0 + timedelta(minutes=10), severity=4, late=True),
            ]
        )  # fmt: skip
    finally:
        await conn.close()


async def listed(capsys: pytest.CaptureFixture[str], url: str, *where: str) -> list[Any]:
    status, out, err = await cli(capsys, "alerts", "list", "--json", "--db", url, *where)
    assert status == 0, err
    return json.loads(out)


@aio_test
async def test_alerts_list(capsys: pytest.CaptureFixture[str], db_url: str) -> None:
    speeding, _, sos, fence = await seed(db_url)
    rows = await listed(capsys, db_url)
    assert [(r["id"], r["type"], r["plate"], r["status"]) for r in rows] == [
        (fence, "geofence_dwell", "沪C777", "open"),
        (sos, "terminal_alarm", "京A12345", "open"),
        (speeding, "speeding", "京A12345", "open"),
    ]
    first = rows[2]
    assert (first["start_time"], first["end_time"]) == (
        "2025-03-01T08:00:00+00:00", "2025-03-01T08:00:40+00:00",
    )  # fmt: skip
    assert (first["severity"], first["severity_name"]) == (HIGH, "high")
    assert first["details"] == {"max_kmh": 75.5, "limit_kmh": 60, "duration_s": 40}
    assert rows[0]["late"] is True and rows[1]["end_time"] is None

    assert [r["id"] for r in await listed(capsys, db_url, "--plate", "沪c 777")] == [fence]
    assert [r["id"] for r in await listed(capsys, db_url, "--type", "speeding")] == [speeding]
    assert [r["id"] for r in await listed(capsys, db_url, "--limit", "1")] == [fence]
    since = await listed(capsys, db_url, "--since", "2025-03-01T08:05:00")  # naive: UTC
    assert [r["id"] for r in since] == [fence, sos]
    since = await listed(capsys, db_url, "--since", "2025-03-01T16:05:00+08:00")
    assert [r["id"] for r in since] == [fence, sos]

    status, out, err = await cli(capsys, "alerts", "list", "--db", db_url)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID", "STATUS", "SEVERITY", "TYPE", "PLATE", "START", "(UTC)", "END", "(UTC)", "DETAILS",
    ]  # fmt: skip
    assert lines[3].split() == [
        str(speeding), "open", "high", "speeding", "京A12345", "2025-03-01", "08:00:00Z",
        "2025-03-01", "08:00:40Z", '{"max_kmh":75.5,"limit_kmh":60,"duration_s":40}',
    ]  # fmt: skip
    assert lines[1].split()[4:9] == ["沪C777", "2025-03-01", "08:10:00Z", "-", "late"]

    status, out, err = await cli(capsys, "alerts", "list", "--type", "sos", "--db", db_url)
    assert status == 2 and "invalid choice: 'sos'" in err
    status, out, err = await cli(capsys, "alerts", "list", "--limit", "0", "--db", db_url)
    assert status == 2 and "at least 1" in err
    status, out, err = await cli(capsys, "alerts", "list", "--since", "yesterday", "--db", db_url)
    assert status == 2 and "not an ISO 8601 time" in err


@aio_test
async def test_alerts_lifecycle(capsys: pytest.CaptureFixture[str], db_url: str) -> None:
    speeding, _, sos, fence = await seed(db_url)

    status, out, err = await cli(
        capsys, "alerts", "ack", str(sos), "--by", "王调度", "--db", db_url
    )
    assert status == 0, err
    assert out.strip() == f"alert {sos} acknowledged: terminal_alarm, 京A12345, now acknowledged"
    status, out, err = await cli(capsys, "alerts", "ack", str(sos), "--by", "赵", "--db", db_url)
    assert (status, out) == (1, "")
    assert err.strip() == (
        f"fleetwatch alerts: error: alert {sos} is acknowledged: it was acknowledged already"
    )

    status, out, err = await cli(
        capsys, "alerts", "handle", str(sos), "--by", "王调度", "--action", "phone_call",
        "--note", "司机确认误触", "--db", db_url,
    )  # fmt: skip
    assert status == 0, err
    assert out.strip() == f"alert {sos} handled (phone_call): terminal_alarm, 京A12345, now handled"
    status, out, err = await cli(
        capsys, "alerts", "close", str(sos), "--by", "王调度", "--json", "--db", db_url
    )
    assert status == 0, err
    closed = json.loads(out)
    assert (closed["status"], closed["closed_by"], closed["handling_note"]) == (
        "closed", "王调度", "司机确认误触",
    )  # fmt: skip

    # Not handled: closing needs a reason; handling needs an acknowledgement.
    status, out, err = await cli(
        capsys, "alerts", "close", str(speeding), "--by", "王", "--db", db_url
    )
    assert status == 1 and "closing it needs a note saying why" in err
    status, out, err = await cli(
        capsys, "alerts", "handle", str(fence), "--by", "王", "--action", "note", "--db", db_url
    )
    assert status == 1 and "acknowledge it before recording how it was handled" in err
    status, out, err = await cli(
        capsys, "alerts", "close", str(speeding), "--by", "王", "--note", "测速误差", "--db", db_url
    )
    assert status == 0, err
    assert out.strip() == (
        f"alert {speeding} closed (acknowledged too): speeding, 京A12345, now closed"
    )
    status, out, err = await cli(
        capsys, "alerts", "handle", str(speeding), "--by", "王", "--action", "sms", "--db", db_url
    )
    assert status == 2 and "invalid choice: 'sms'" in err
    for argv in (("ack", "4242", "--by", "x"), ("audit", "4242"), ("show", "4242")):
        status, out, err = await cli(capsys, "alerts", *argv, "--db", db_url)
        assert (status, err.strip()) == (1, "fleetwatch alerts: error: no alert 4242")
    status, out, err = await cli(capsys, "alerts", "ack", "x1", "--by", "x", "--db", db_url)
    assert status == 2 and "invalid int value: 'x1'" in err

    assert [r["id"] for r in await listed(capsys, db_url, "--status", "open")] == [fence]
    assert [r["id"] for r in await listed(capsys, db_url, "--status", "closed")] == [sos, speeding]
    both = await listed(capsys, db_url, "--status", "open", "--status", "closed")
    assert len(both) == 3

    status, out, err = await cli(capsys, "alerts", "audit", str(sos), "--json", "--db", db_url)
    assert status == 0, err
    audit = json.loads(out)
    assert [(a["actor"], a["action"], a["from_status"], a["to_status"]) for a in audit] == [
        ("system", "episode_open", None, "open"),
        ("王调度", "acknowledge", "open", "acknowledged"),
        ("王调度", "handle", "acknowledged", "handled"),
        ("王调度", "close", "handled", "closed"),
    ]
    assert audit[2]["details"] == {"handling_action": "phone_call", "note": "司机确认误触"}
    status, out, err = await cli(capsys, "alerts", "audit", str(sos), "--db", db_url)
    assert status == 0, err
    assert [line.split()[2:4] for line in out.splitlines()] == [
        ["system", "episode_open"], ["王调度", "acknowledge"], ["王调度", "handle"],
        ["王调度", "close"],
    ]  # fmt: skip

    status, out, err = await cli(capsys, "alerts", "show", str(sos), "--db", db_url)
    assert status == 0, err
    assert "severity:          1 (critical)" in out
    assert 'details:           {"bit":0,"name":"emergency","serial":99}' in out

    # A supervisor's second review: once, with a verdict and a note; the status stays.
    status, out, err = await cli(
        capsys, "alerts", "review", str(fence), "--by", "监管李", "--verdict", "approved",
        "--note", "n", "--db", db_url,
    )  # fmt: skip
    assert status == 1 and "only a handled or closed alert can be reviewed" in err
    review = ("alerts", "review", str(sos), "--by", "监管李", "--note", "处置及时", "--db", db_url)
    status, out, err = await cli(capsys, *review, "--verdict", "approved")
    assert status == 0, err
    assert out.strip() == f"alert {sos} reviewed (approved): terminal_alarm, 京A12345, now closed"
    status, out, err = await cli(capsys, *review, "--verdict", "rejected")
    assert status == 1 and f"alert {sos} was reviewed already" in err
    status, out, err = await cli(capsys, "alerts", "show", str(sos), "--db", db_url)
    assert "review_verdict:    approved" in out and "reviewed_by:       监管李" in out


@aio_test
async def test_watchlist_commands(capsys: pytest.CaptureFixture[str], db_url: str) -> None:
    status, out, err = await cli(
        capsys, "watchlist", "add", "京a12345", "--reason", "涉嫌套牌", "--by", "公安 李",
        "--db", db_url,
    )  # fmt: skip
    assert (status, out.strip()) == (0, "watching 京A12345: 涉嫌套牌"), err
    status, out, err = await cli(
        capsys, "watchlist", "add", "沪C 777", "--reason", "逾期未检", "--db", db_url
    )
    assert status == 0, err

    status, out, err = await cli(capsys, "watchlist", "list", "--json", "--db", db_url)
    assert status == 0, err
    rows = json.loads(out)
    assert [(r["plate"], r["reason"], r["active"]) for r in rows] == [
        ("京A12345", "涉嫌套牌", True), ("沪C777", "逾期未检", True),
    ]  # fmt: skip
    assert rows[0]["added_by"] == "公安 李" and rows[1]["added_by"]  # the login name

    status, out, err = await cli(capsys, "watchlist", "remove", "京A12345", "--db", db_url)
    assert (status, out.strip()) == (0, "no longer watching 京A12345"), err
    status, out, err = await cli(capsys, "watchlist", "remove", "京A12345", "--db", db_url)
    assert (status, err.strip()) == (
        1, "fleetwatch watchlist: error: plate 京A12345 is not on the watchlist",
    )  # fmt: skip
    status, out, err = await cli(capsys, "watchlist", "list", "--db", db_url)
    assert status == 0 and [line.split()[0] for line in out.splitlines()] == ["沪C777"]
    status, out, err = await cli(capsys, "watchlist", "list", "--all", "--json", "--db", db_url)
    assert [(r["plate"], r["active"]) for r in json.loads(out)] == [
        ("京A12345", False), ("沪C777", True),
    ]  # fmt: skip
    status, out, err = await cli(capsys, "watchlist", "add", "京B1", "--db", db_url)
    assert status == 2 and "--reason" in err
    status, out, err = await cli(
        capsys, "watchlist", "add", "京B1", "--reason", " ", "--db", db_url
    )
    assert (status, err.strip()) == (
        1,
        "fleetwatch watchlist: error: watchlist: a reason is required",
    )


@aio_test
async def test_alerts_need_the_migrated_schema(
    capsys: pytest.CaptureFixture[str], bare_db_url: str
) -> None:
    status, _out, err = await cli(capsys, "alerts", "list", "--db", bare_db_url)
    assert status == 1 and "run `fleetwatch db migrate --db" in err
