"""``fleetwatch db ...`` and ``fleetwatch vehicles ...`` end to end, through ``main([...])``.

``main`` runs its coroutines with ``asyncio.run``, which cannot run inside the reactor's loop
that every test runs in, so the tests call it in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from fleetwatch.cli import main
from store.cluster import EmbeddedCluster, pg_bin
from store.migrations import available
from tests.aio import aio_test, in_thread

LABELS = [m.label for m in available()]

GOOD_CSV = """\
plate,plate_color,class,company,phone,vin
京A12345,2,coach,北京客运,013912345678,LSVAM4187C2184847
京B00001,,school-bus,北京客运,0139 1234 5679,
"沪C 777",1,hazmat,"Shanghai Hazmat, Ltd",13600000001,
"""


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return status, out, err


async def vehicles(capsys: pytest.CaptureFixture[str], *where: str) -> list[dict[str, object]]:
    status, out, err = await cli(capsys, "vehicles", "list", "--json", *where)
    assert status == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def initialized() -> Iterator[tuple[Path, int, str]]:
    """A data directory after ``fleetwatch db init`` (stopped), its exit status and output.

    Shared by the module because creating a cluster takes a second or two.
    """
    base = Path(tempfile.mkdtemp(prefix="fwt-", dir="/tmp"))
    base.chmod(0o755)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = in_thread(main, ["db", "init", "--data-dir", str(base / "data")])
    try:
        yield base / "data", status, out.getvalue()
    finally:
        EmbeddedCluster.in_data_dir(base / "data").stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


@aio_test
async def test_db_init_status_url(
    capsys: pytest.CaptureFixture[str], initialized: tuple[Path, int, str]
) -> None:
    target, status, out = initialized
    assert status == 0
    assert all(f"applied {label}" in out for label in LABELS)
    assert "created 10 partition(s)" in out
    cluster = EmbeddedCluster.in_data_dir(target)
    assert cluster.initialized and not cluster.running  # started for the command, then stopped

    status, out, err = await cli(capsys, "db", "init", "--data-dir", str(target))
    assert status == 0, err
    assert f"schema up to date ({LABELS[-1]})" in out  # idempotent

    status, out, err = await cli(capsys, "db", "status", "--data-dir", str(target))
    assert status == 0, err
    n = len(LABELS)
    lines = out.splitlines()
    assert lines[0] == "applied migrations:" and lines[n + 1 : n + 3] == [
        "pending migrations:",
        "  (none)",
    ]
    assert [line.split()[0] for line in lines[1 : n + 1]] == LABELS
    assert all(line.split()[1].startswith("20") for line in lines[1 : n + 1])
    assert "10 daily: positions_" in out
    assert "positions_default: 0 row(s)" in out
    assert not cluster.running

    status, out, err = await cli(capsys, "db", "url", "--data-dir", str(target))
    assert (status, out) == (1, "")
    assert "is not running" in err

    cluster.start()  # as `fleetwatch serve` would
    try:
        status, out, err = await cli(capsys, "db", "url", "--data-dir", str(target))
        assert status == 0, err
        url = out.strip()
        assert url == cluster.url
        psql = await asyncio.to_thread(
            subprocess.run,
            [str(pg_bin() / "psql"), url, "-XAtc", "SELECT count(*) FROM schema_migrations"],
            capture_output=True,
            text=True,
        )
        assert (psql.returncode, psql.stdout) == (0, f"{len(LABELS)}\n"), psql.stderr
        # Commands use the running server and leave it running.
        status, out, err = await cli(capsys, "db", "status", "--data-dir", str(target))
        assert status == 0, err
        assert cluster.running
    finally:
        cluster.stop()


@aio_test
async def test_commands_refuse_a_data_dir_without_database(
    capsys: pytest.CaptureFixture[str], short_tmp: Path
) -> None:
    for argv in (["db", "status"], ["db", "migrate"], ["vehicles", "list"]):
        status, _out, err = await cli(capsys, *argv, "--data-dir", str(short_tmp / "typo"))
        assert status == 1
        assert "run `fleetwatch db init --data-dir" in err
    assert not (short_tmp / "typo" / "postgres" / "pgdata").exists()
    status, _out, err = await cli(capsys, "db", "url", "--data-dir", str(short_tmp / "typo"))
    assert status == 1 and "does not exist" in err


@aio_test
async def test_db_migrate_and_status_with_url(
    capsys: pytest.CaptureFixture[str], bare_db_url: str
) -> None:
    status, out, err = await cli(capsys, "db", "status", "--db", bare_db_url)
    assert status == 0, err
    pending = "".join(f"  {label}\n" for label in LABELS)
    assert f"applied migrations:\n  (none)\npending migrations:\n{pending}" in out
    assert "(no positions table yet)" in out

    status, out, err = await cli(capsys, "vehicles", "list", "--db", bare_db_url)
    assert status == 1
    assert "run `fleetwatch db migrate --db" in err

    status, out, err = await cli(capsys, "db", "migrate", "--db", bare_db_url)
    assert status == 0, err
    assert all(f"applied {label}" in out for label in LABELS)
    status, out, err = await cli(capsys, "db", "status", "--db", bare_db_url)
    assert "pending migrations:\n  (none)" in out

    status, out, err = await cli(
        capsys, "db", "status", "--db", "postgresql://x@/nowhere?host=/nonexistent"
    )
    assert status == 1 and "cannot reach the database" in err


@aio_test
async def test_vehicles_add_and_list(capsys: pytest.CaptureFixture[str], db_url: str) -> None:
    status, out, err = await cli(
        capsys, "vehicles", "add", "--plate", "京a12345", "--class", "coach",
        "--company", "北京客运", "--phone", "013912345678", "--db", db_url,
    )  # fmt: skip
    assert status == 0, err
    assert out.startswith("added vehicle 1: 京A12345 (yellow), coach, phone 13912345678")

    status, out, err = await cli(
        capsys, "vehicles", "add", "--plate", "京A99999", "--class", "police",
        "--company", "北京客运", "--phone", "00013912345678", "--plate-color", "4",
        "--vin", "lsvam4187c2184847", "--db", db_url,
    )  # fmt: skip
    assert status == 1  # same phone once the zeros are gone
    assert "phone 13912345678 is already vehicle 1" in err

    status, out, err = await cli(
        capsys, "vehicles", "add", "--plate", "京A99999", "--class", "police",
        "--company", "Police", "--phone", "13800000000", "--plate-color", "4",
        "--vin", "lsvam4187c2184847", "--db", db_url,
    )  # fmt: skip
    assert status == 0, err

    status, out, err = await cli(
        capsys, "vehicles", "add", "--plate", "X1", "--class", "coach", "--company", "C",
        "--phone", "12a", "--db", db_url,
    )  # fmt: skip
    assert status == 1 and "phone '12a': digits only" in err
    status, out, err = await cli(
        capsys, "vehicles", "add", "--plate", "X1", "--class", "bus", "--company", "C",
        "--phone", "1", "--db", db_url,
    )  # fmt: skip
    assert status == 2 and "invalid choice: 'bus'" in err

    rows = await vehicles(capsys, "--db", db_url)
    assert [(r["id"], r["plate"], r["plate_color"], r["class"], r["company"], r["phone"],
             r["vin"]) for r in rows] == [
        (1, "京A12345", 2, "coach", "北京客运", "13912345678", None),
        (2, "京A99999", 4, "police", "Police", "13800000000", "LSVAM4187C2184847"),
    ]  # fmt: skip
    assert all(r["provisioned"] is True and r["created_at"].endswith("+00:00") for r in rows)
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM companies") == 2
    finally:
        await conn.close()

    status, out, err = await cli(capsys, "vehicles", "list", "--db", db_url)
    assert status == 0
    assert out.splitlines()[1].split() == [
        "2", "京A99999", "(white),", "police,", "phone", "13800000000,", "company", "Police,",
        "VIN", "LSVAM4187C2184847;", "offline,", "no", "position", "yet",
    ]  # fmt: skip

    # online state and the last position, its time in Beijing time
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO last_positions (vehicle_id, fix_time, received_time, geom, speed_kmh)"
            " VALUES (1, '2026-03-01 04:05:06+00', now(),"
            " ST_SetSRID(ST_MakePoint(116.397128, 39.916527), 4326), 42.4)"
        )
        await conn.execute("INSERT INTO terminal_holders (vehicle_id, worker) VALUES (1, 'w')")
    finally:
        await conn.close()
    status, out, err = await cli(capsys, "vehicles", "list", "--db", db_url)
    assert status == 0, err
    assert out.splitlines()[0].endswith(
        "; online, last position 116.39713,39.91653 at 2026-03-01 12:05:06 Beijing time, 42 km/h"
    ), out
    assert out.splitlines()[1].endswith("; offline, no position yet")
    rows = await vehicles(capsys, "--db", db_url)
    assert (rows[0]["online"], rows[0]["lon"], rows[0]["fix_time"]) == (
        True, 116.397128, "2026-03-01T04:05:06+00:00")  # fmt: skip
    assert (rows[1]["online"], rows[1]["lon"], rows[1]["fix_time"]) == (False, None, None)


@aio_test
async def test_vehicles_import(
    capsys: pytest.CaptureFixture[str], db_url: str, short_tmp: Path
) -> None:
    good = short_tmp / "fleet.csv"
    good.write_text("\ufeff" + GOOD_CSV, encoding="utf-8")  # Excel's BOM is fine
    status, out, err = await cli(capsys, "vehicles", "import", str(good), "--db", db_url)
    assert status == 0, err
    assert out.strip() == f"imported 3 vehicle(s) from {good}"
    rows = await vehicles(capsys, "--db", db_url)
    assert [(r["plate"], r["plate_color"], r["class"], r["company"], r["phone"]) for r in rows] == [
        ("京A12345", 2, "coach", "北京客运", "13912345678"),
        ("京B00001", 2, "school_bus", "北京客运", "13912345679"),
        ("沪C777", 1, "hazmat", "Shanghai Hazmat, Ltd", "13600000001"),
    ]

    bad = short_tmp / "bad.csv"
    bad.write_text(
        "class,plate,company,phone\n"  # line 1: any column order, optional columns left out
        "coach,粤B1,Fine Co,13700000001\n"  # 2: fine
        "truck,粤B2,Fine Co,13700000002\n"  # 3: unknown class
        "\n"  # 4: blank, skipped
        'coach,"粤B3\n'  # 5-6: a quoted field spanning two lines (then a bad phone)
        '",Fine Co,1370000000x\n'
        "coach,粤B4,Fine Co,013700000001\n"  # 7: same phone as line 2
        "coach,粤B5,Fine Co,013912345678\n"  # 8: phone of an existing vehicle
        "coach,粤B6,Fine Co\n",  # 9: a field short
        encoding="utf-8",
    )
    status, out, err = await cli(capsys, "vehicles", "import", str(bad), "--db", db_url)
    assert status == 1
    lines = err.splitlines()
    assert lines[:-1] == [
        f"{bad}:3: class 'truck': one of police, school_bus, coach, heavy_truck, hazmat, other",
        f"{bad}:5: phone '1370000000x': digits only",
        f"{bad}:7: phone 13700000001 also on line 2",
        f"{bad}:8: phone 13912345678 is already vehicle 1 (京A12345)",
        f"{bad}:9: 3 fields, the header has 4",
    ]
    assert lines[-1] == "fleetwatch vehicles import: 5 error(s), nothing imported"

    # Rows that are fine on their own but clash with the database: reported, nothing written.
    clash = short_tmp / "clash.csv"
    clash.write_text(
        "plate,class,company,phone\n粤B1,coach,New Co,13700000001\n京A12345,coach,X,1\n"
        "沪C 777,hazmat,X,2\n",
        encoding="utf-8",
    )
    status, out, err = await cli(capsys, "vehicles", "import", str(clash), "--db", db_url)
    assert status == 1
    assert f"{clash}:3: plate 京A12345 (colour 2) is already vehicle 1" in err
    assert f"{clash}:4:" not in err  # 沪C 777 is blue (1); this row is yellow (2): no clash
    assert len(await vehicles(capsys, "--db", db_url)) == 3
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM companies WHERE name = 'New Co'") == 0
    finally:
        await conn.close()

    header = short_tmp / "header.csv"
    header.write_text("plate,klass,company,phone\nA,coach,C,1\n", encoding="utf-8")
    status, out, err = await cli(capsys, "vehicles", "import", str(header), "--db", db_url)
    assert status == 1
    assert f"{header}:1: header: missing column(s) class; unknown column(s) klass" in err

    gbk = short_tmp / "gbk.csv"
    gbk.write_bytes("plate,class,company,phone\n京A1,coach,北京,1\n".encode("gbk"))
    status, out, err = await cli(capsys, "vehicles", "import", str(gbk), "--db", db_url)
    assert status == 1 and f"{gbk}:2: not UTF-8 text" in err


@aio_test
async def test_vehicles_with_the_embedded_cluster(
    capsys: pytest.CaptureFixture[str], initialized: tuple[Path, int, str]
) -> None:
    data_dir = initialized[0]
    where = ("--data-dir", str(data_dir))
    cluster = EmbeddedCluster.in_data_dir(data_dir)
    status, _out, err = await cli(
        capsys, "vehicles", "add", "--plate", "京C1", "--class", "heavy_truck",
        "--company", "Haulage", "--phone", "15000000001", *where,
    )  # fmt: skip
    assert status == 0, err
    assert not cluster.running  # started for the command only

    cluster.start()
    try:
        rows = await vehicles(capsys, *where)
        assert [r["plate"] for r in rows] == ["京C1"]
        assert cluster.running  # the server's cluster was used, not stopped
    finally:
        cluster.stop()
