"""Plates in one canonical form wherever they enter (issue 11 item 8): the CLI (real
subprocesses), a terminal's registration (real TCP), NMEA ids, the watchlist, and the migration
that brings rows stored before it into line."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from geo.plates import normalise_plate
from ingest.nmea_server import find_vehicle_id
from protocols.jt808 import Register
from store.commands import vehicle_id_by_plate
from store.migrations import available, migrate
from tests.aio import aio_test
from tests.ingest_harness import running_ingest
from tests.terminal_client import Terminal


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("浙Ｃ33333", "浙C33333"),  # full-width C
        ("京A 12345", "京A12345"),
        ("京A·12346", "京A12346"),
        (" 京a-12345 ", "京A12345"),
        ("沪B\u300012345", "沪B12345"),  # ideographic space
        ("粤Ｂ・１２３４５", "粤B12345"),  # full-width digits, katakana middle dot
        ("京A.1234_5", "京A12345"),
        ("京A12345警", "京A12345警"),
        ("粤B12345\x00\x00\x00", "粤B12345"),  # NUL padding of a registration field
        ("", ""),
        ("·-", ""),
    ],
)
def test_normalise_plate(typed: str, canonical: str) -> None:
    assert normalise_plate(typed) == canonical
    assert normalise_plate(canonical) == canonical


def fleetwatch(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetwatch.cli", *argv],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _add(db: str, plate: str, phone: str) -> subprocess.CompletedProcess[str]:
    return fleetwatch(
        "vehicles", "add", "--plate", plate, "--class", "coach", "--company", "测试客运",
        "--phone", phone, "--db", db,
    )  # fmt: skip


@aio_test
async def test_cli_plates_are_canonical_everywhere(db_url: str) -> None:
    def scenario() -> None:
        added = _add(db_url, "浙Ｃ33333", "13900000001")
        assert added.returncode == 0, added.stderr
        assert "浙C33333" in added.stdout
        assert _add(db_url, "京A 12345", "13900000002").returncode == 0
        again = _add(db_url, "京A12345", "13900000003")
        assert again.returncode == 1
        assert "plate 京A12345 (colour 2) is already vehicle" in again.stderr
        assert "Traceback" not in again.stderr
        listed = fleetwatch("vehicles", "list", "--json", "--db", db_url)
        assert sorted(v["plate"] for v in json.loads(listed.stdout)) == ["京A12345", "浙C33333"]
        csv = Path(f"/tmp/fwt-plates-{abs(hash(db_url))}.csv")
        csv.write_text("plate,class,company,phone\n京A·12346,coach,测试客运,13900000004\n")
        try:
            imported = fleetwatch("vehicles", "import", str(csv), "--db", db_url)
        finally:
            csv.unlink()
        assert imported.returncode == 0, imported.stderr
        listed = fleetwatch("vehicles", "list", "--json", "--db", db_url)
        assert "京A12346" in {v["plate"] for v in json.loads(listed.stdout)}
        watch = fleetwatch("watchlist", "add", "京a-12345", "--reason", "stolen", "--db", db_url)
        assert watch.returncode == 0, watch.stderr
        assert "watching 京A12345" in watch.stdout
        removed = fleetwatch("watchlist", "remove", "京A 12345", "--db", db_url)
        assert removed.returncode == 0, removed.stderr
        filtered = fleetwatch("alerts", "list", "--plate", "浙c 33333", "--json", "--db", db_url)
        assert filtered.returncode == 0, filtered.stderr

    await asyncio.to_thread(scenario)
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT plate FROM watchlist") == "京A12345"
        vid = await conn.fetchval("SELECT id FROM vehicles WHERE plate = '京A12345'")
        assert await find_vehicle_id(conn, "京a·12345") == vid  # an NMEA unit's id
        assert await vehicle_id_by_plate(conn, " 京a-12345") == vid  # fleetwatch send PLATE
    finally:
        await conn.close()


@aio_test
async def test_registration_plate_is_canonical(db_url: str, short_tmp: Path) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO vehicles (plate, plate_color, phone) VALUES ('京A12345', 2, NULL)"
        )
    finally:
        await conn.close()
    async with running_ingest(db_url, short_tmp, policy="known") as ingest:
        terminal = await Terminal.connect(ingest.port, "13700000001")
        await terminal.send(
            Register(province=11, city=1, manufacturer="FWTST", model="T-1",
                     terminal_id="T0001", plate_color=2, plate="京A 12345")
        )  # fmt: skip
        answer = await terminal.receive()
        assert (answer.msg_id, answer.body.result) == (0x8100, 0), answer
        rows = await ingest.pool.fetch("SELECT plate, phone FROM vehicles")
        assert [(r["plate"], r["phone"]) for r in rows] == [("京A12345", "13700000001")]
        await terminal.close()


@aio_test
async def test_migration_normalises_stored_plates(bare_db_url: str) -> None:
    conn = await asyncpg.connect(bare_db_url)
    try:
        before = [m for m in available() if m.version < 9]
        await migrate(conn, before)
        await conn.execute(
            """INSERT INTO vehicles (plate, plate_color, phone) VALUES
               ('浙Ｃ33333', 2, '1'), ('京a 12345', 2, '2'), ('京A·12346', 1, '3'),
               ('京A-12346', 1, '4'), ('京A12346', 1, '5'), (NULL, 0, '6')"""
        )
        await conn.execute(
            "INSERT INTO watchlist (plate, reason, added_by) VALUES ('粤Ｂ 12345', 'x', 'me')"
        )
        applied = await migrate(conn)
        assert [m.version for m in applied][:1] == [9]
        rows = await conn.fetch("SELECT phone, plate FROM vehicles ORDER BY phone")
        assert [(r["phone"], r["plate"]) for r in rows] == [
            ("1", "浙C33333"), ("2", "京A12345"),
            # three rows for one plate and colour: left for an operator to merge
            ("3", "京A·12346"), ("4", "京A-12346"), ("5", "京A12346"),
            ("6", None),
        ]  # fmt: skip
        assert await conn.fetchval("SELECT plate FROM watchlist") == "粤B12345"
    finally:
        await conn.close()
