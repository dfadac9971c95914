"""``fleetwatch loadtest`` end to end: a short rate ramp against a running ``serve`` (its
numbers checked against the database independently) and a small ``--connections`` run on a
server the command starts itself. Both read the JSON report and parse the SVG chart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg

from loadtest.loadrun import PROBE_PLATE
from tests.test_lean_load import _free_port, _wait_for_port

SVG = "{http://www.w3.org/2000/svg}"


def _loadtest(out: Path, *args: str) -> tuple[dict[str, Any], str, Path]:
    """Run the command; its report, its stdout + stderr, the chart's path."""
    run = subprocess.run(
        [sys.executable, "-m", "fleetwatch.cli", "loadtest", *args, "--out", str(out)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    text = run.stdout + run.stderr
    assert run.returncode == 0, text[-4000:]
    reports = sorted(out.glob("*.json"))
    assert len(reports) == 1, text
    charts = sorted(out.glob("*.svg"))
    assert [c.stem for c in charts] == [reports[0].stem]
    return json.loads(reports[0].read_text()), text, charts[0]


def _check_chart(path: Path, seconds: int, lines_drawn: int = 4) -> None:
    root = ET.parse(path).getroot()  # well-formed XML
    assert root.tag == f"{SVG}svg"
    lines = root.findall(f"{SVG}polyline")
    assert len(lines) == lines_drawn  # target, sent, acked; p99; (connected)
    points = [len(p.get("points", "").split()) for p in lines]
    assert all(n >= seconds for n in points), points


def _ordered(q: dict[str, float], key: str = "{}") -> None:
    values = [q[key.format(k)] for k in ("p50", "p95", "p99", "max")]
    assert 0 < values[0] <= values[1] <= values[2] <= values[3], q


def _db(url: str, query: str, *args: Any) -> Any:
    async def fetch() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchrow(query, *args)
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:  # the test runner's loop may be running
        return pool.submit(asyncio.run, fetch()).result()


def test_rate_ramp_against_a_running_server(short_tmp: Path) -> None:
    from store.cluster import EmbeddedCluster

    jt808, http = _free_port(), _free_port()
    data = short_tmp / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetwatch.cli", "serve", "--data-dir", str(data),
         "--jt808-port", str(jt808), "--http-port", str(http), "--host", "127.0.0.1",
         "--workers", "2", "--registration-rate", "0", "--max-per-address", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        _wait_for_port(jt808, proc, 60)
        _wait_for_port(http, proc, 60)
        url = EmbeddedCluster.in_data_dir(data).url
        report, text, chart = _loadtest(
            short_tmp / "out", "--rate", "600", "--ramp", "200", "--step-seconds", "2",
            "--duration", "4", "--terminals", "40", "--alert-every", "2", "--interval", "2",
            "--server", f"127.0.0.1:{jt808}", "--db", url, "--http", f"http://127.0.0.1:{http}",
        )  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)  # SIGINT is ignored when pytest runs in the background
        proc.communicate(timeout=120)
    assert "target 600/s" in text and "p99 so far" in text  # progress on stderr
    assert "exactly once                  yes" in text
    # 200/s for 2 s, 400/s for 2 s, 600/s held 4 s: about 3,600 positions
    assert 3000 <= report["sent"] <= 3800, report["sent"]
    assert report["acked"] <= report["sent"] and report["unacked"] == 0
    assert report["stored"] == report["acked"] and report["duplicates"] == 0
    assert report["exactly_once"] is True
    _ordered(report["ack_latency_ms"])
    steps = report["steps"]
    assert [s["rate"] for s in steps] == [200, 400, 600]
    assert sum(s["acked"] for s in steps) == report["acked"]
    for s in steps:
        _ordered(s, "ack_{}_ms")
        assert 0.7 * s["rate"] <= s["sent_per_s"] <= 1.3 * s["rate"], s
    assert sum(r["sent"] for r in report["per_second"]) == report["sent"]
    assert len(report["server_cpu_pct_per_worker"]) == 2  # found from the port: both workers
    assert report["server_rss_mb"] > 50 and report["postgres_cpu_pct"] > 0
    assert report["writer_flush"]["flushes"] > 0 and report["writer_flush"]["mean_ms"] > 0
    assert (
        sum(report["writer_flush"]["per_bucket_le_s"].values())
        == (report["writer_flush"]["flushes"])
    )
    # the SOS probes: every one raised an alert, timed to its row and to the live socket
    alerts = report["alerts"]
    assert alerts["scheduled"] >= 2 and alerts["stored"] == alerts["scheduled"]
    assert alerts["position_to_alert_ms"]["n"] == alerts["scheduled"]
    _ordered(alerts["position_to_alert_ms"])
    assert alerts["seen_live"] >= 1 and alerts["alert_to_browser_ms"]["n"] == alerts["seen_live"]
    assert alerts["position_to_alert_ms"]["max"] < 10_000
    _check_chart(chart, 8)

    # independently of the command: the database of the server it measured (started again)
    with EmbeddedCluster.in_data_dir(data) as cluster:
        stored = _db(
            cluster.url,
            "SELECT count(*) AS n, count(DISTINCT (vehicle_id, fix_time)) AS d FROM positions p"
            " JOIN vehicles v ON v.id = p.vehicle_id WHERE v.plate LIKE '测L%'",
        )
        sos = _db(
            cluster.url,
            "SELECT count(*) AS n FROM alerts a JOIN vehicles v ON v.id = a.vehicle_id"
            " WHERE v.plate LIKE $1 AND a.details->>'name' = 'emergency'",
            PROBE_PLATE + "%",
        )
    assert (stored["n"], stored["d"]) == (report["acked"], report["acked"])
    assert sos["n"] == alerts["scheduled"]


def test_connections_on_its_own_server(short_tmp: Path) -> None:
    report, text, chart = _loadtest(
        short_tmp / "out", "--connections", "300", "--duration", "6", "--heartbeat", "2",
        "--alert-every", "2", "--interval", "2", "--procs", "2", "--source-addrs", "3",
    )  # fmt: skip
    assert "connected 300" in text  # progress
    c = report["connections"]
    assert c["requested"] == c["authenticated"] == c["connected_at_end"] == 300
    assert c["disconnects"] == 0
    # every terminal every 2 s for 6 s: 900 heartbeats, each acknowledged
    assert 700 <= c["heartbeats_sent"] <= 1000 and c["heartbeats_acked"] == c["heartbeats_sent"]
    assert c["rss_connected_mb"] >= c["rss_idle_mb"] > 50
    assert c["rss_per_connection_kb"] is not None and c["rss_per_connection_kb"] < 1000
    # a low position rate alongside (300/60 = 5/s), stored exactly once
    assert 15 <= report["sent"] <= 45 and report["stored"] == report["acked"] == report["sent"]
    assert report["alerts"]["stored"] == report["alerts"]["scheduled"] >= 2
    assert report["loadgen"]["processes"] == 2
    work = Path(text.split("data in ", 1)[1].split()[0])
    assert work.name.startswith("fwload-") and not work.exists()  # its server's dir is removed
    _check_chart(chart, 5, 5)
    assert [r["connected"] for r in report["per_second"]][1:-1] == [300] * (
        len(report["per_second"]) - 2
    )


def test_bad_options_are_one_line_errors(capsys: Any) -> None:
    from fleetwatch.cli import main

    for argv, message in [
        (["--rate", "100", "--server", "127.0.0.1:1"], "--server, --db and --http go together"),
        (["--rate", "-5"], "--rate must be > 0"),
        (["--connections", "0"], "--connections must be ≥ 1"),
        (["--rate", "100", "--alert-every", "0.5"], "--alert-every > 1"),
    ]:
        assert main(["loadtest", *argv]) == 2
        assert message in capsys.readouterr().err
    assert main(["loadtest", "--rate", "1", "--connections", "5"]) == 2  # one or the other
    # a server that is not there: an error naming it, no traceback
    argv = ["loadtest", "--rate", "100", "--server", "127.0.0.1:1", "--db",
            "postgresql:///x?host=/nonexistent", "--http", "http://127.0.0.1:1"]  # fmt: skip
    run = subprocess.run([sys.executable, "-m", "fleetwatch.cli", *argv], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "nothing listens on 127.0.0.1:1" in run.stderr and "Traceback" not in run.stderr
