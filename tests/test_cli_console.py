"""The command line as a new user meets it (issue 11 item 8), always as a real subprocess: every
mistake gives one line saying what to do and a non-zero exit, never a traceback; --version;
decode's exit codes; import-nmea on files that hold no NMEA; GeoJSON with unknown properties;
serve's banner and its JSON log (one flat object per line, with connect, register, authenticate,
refusal and alert-opened lines)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from fleetwatch.console import mask_url
from protocols.jt808 import BEIJING, Authenticate, check_code
from tests.aio import aio_test
from tests.terminal_client import Terminal, report

DEAD_DB = "postgresql://fleet:secret@127.0.0.1:1/fleetwatch"


def fleetwatch(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetwatch.cli", *argv],
        capture_output=True, text=True, timeout=120, cwd=cwd,
        env={**os.environ, "FLEETWATCH_DEBUG": ""},
    )  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """The run failed with exactly one line on stderr, no traceback, naming ``words``."""
    assert result.returncode not in (0, None), result
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def serve_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """serve failed: its last line is the one error line (before it at most the start-up
    facts, such as the connection capacity), naming ``words``; no traceback."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == lines[-1:], result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def _taken_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------ errors: one line, no traceback


def test_version() -> None:
    result = fleetwatch("--version")
    assert result.returncode == 0
    assert re.fullmatch(r"fleetwatch \d+\.\d+\.\d+\S*\n", result.stdout), result.stdout


def test_serve_refuses_a_data_dir_that_is_a_file_or_has_no_parent(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    one_line_error(fleetwatch("serve", "--data-dir", str(afile)), "is a file", "--data-dir")
    missing = tmp_path / "no" / "such" / "dir"
    one_line_error(fleetwatch("serve", "--data-dir", str(missing)), "does not exist", "mkdir -p")
    assert not (tmp_path / "no").exists(), "parents are never created"


def test_serve_with_an_unreachable_database(tmp_path: Path) -> None:
    line = serve_error(
        fleetwatch("serve", "--db", DEAD_DB, "--data-dir", str(tmp_path / "d"),
                   "--jt808-port", "0", "--http-port", "0", "--host", "127.0.0.1"),
        "cannot reach the database", "--db",
    )  # fmt: skip
    assert "secret" not in line and "fleet:***@127.0.0.1:1" in line


def test_serve_on_a_taken_port(tmp_path: Path, db_url: str) -> None:
    with _taken_port() as taken:
        port = taken.getsockname()[1]
        result = fleetwatch(
            "serve", "--db", db_url, "--data-dir", str(tmp_path / "d"), "--jt808-port",
            str(port), "--http-port", "0", "--host", "127.0.0.1",
        )  # fmt: skip
    assert serve_error(result) == (
        f"fleetwatch serve: error: port {port} on 127.0.0.1 is already in use (another "
        f"fleetwatch serve, or another program: `ss -ltnp 'sport = :{port}'`); stop it or "
        "choose another port"
    )


def test_serve_option_mistakes_are_usage_errors(tmp_path: Path) -> None:
    """Caught while parsing (exit 2, argparse's usage line, then the error), before start-up."""
    bad = tmp_path / "rules.json"
    bad.write_text("{rules: 1}")
    for argv, words in (
        (["--http-port", "70000"], "70000 is not a TCP port (0-65535)"),
        (["--rules-config", str(bad)], "not a JSON object"),
        (["--rules-config", str(tmp_path / "none.json")], "No such file or directory"),
        (["--max-ahead", "-5"], "-5 is not a positive number"),
    ):
        result = fleetwatch("serve", "--data-dir", str(tmp_path / "d"), *argv)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert words in result.stderr.strip().splitlines()[-1], result.stderr
    assert not (tmp_path / "d").exists()


def test_database_commands_with_bad_targets(tmp_path: Path) -> None:
    line = one_line_error(fleetwatch("vehicles", "list", "--db", DEAD_DB), "cannot reach")
    assert "secret" not in line
    one_line_error(fleetwatch("db", "status", "--db", "postgresql://x@nohost.invalid/db"),
                   "nohost.invalid")  # fmt: skip
    afile = tmp_path / "afile"
    afile.write_text("")
    one_line_error(fleetwatch("vehicles", "list", "--data-dir", str(afile)), str(afile))
    one_line_error(fleetwatch("db", "init", "--data-dir", str(afile)), str(afile))
    one_line_error(fleetwatch("vehicles", "import", str(tmp_path), "--db", DEAD_DB),
                   "a directory, not a file")  # fmt: skip


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("empty.nmea", b"", ("is empty",)),
        ("track.bin", bytes(range(256)) * 64, ("no NMEA 0183 sentences",)),
        ("track.csv", b"time,lat,lon\n2025-03-01T08:00:00Z,31.2,121.5\n", ("binary or CSV",)),
        ("broken.gz", b"\x1f\x8b\x08\x00garbage", ("cannot read it",)),
    ],
)
def test_import_nmea_refuses_files_without_nmea(
    tmp_path: Path, name: str, content: bytes, words: tuple[str, ...]
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    # Refused before any database work (the URL leads nowhere).
    one_line_error(fleetwatch("import-nmea", str(path), "--plate", "京A12345", "--db", DEAD_DB),
                   *words)  # fmt: skip


def test_import_nmea_with_sentences_but_no_fix_fails(tmp_path: Path, db_url: str) -> None:
    assert fleetwatch(
        "vehicles", "add", "--plate", "京A12345", "--class", "coach", "--company", "c",
        "--phone", "13900000001", "--db", db_url,
    ).returncode == 0  # fmt: skip
    path = tmp_path / "searching.nmea"
    path.write_text("$GPGGA,080000.00,,,,,0,00,99.99,,,,,,*6E\n")
    result = fleetwatch("import-nmea", str(path), "--plate", "京A12345", "--db", db_url)
    assert result.returncode == 1 and "no fixes" in result.stderr
    assert "Traceback" not in result.stderr


def test_geojson_unknown_property_is_refused_with_the_known_ones(
    tmp_path: Path, db_url: str
) -> None:
    path = tmp_path / "fences.geojson"
    path.write_text(json.dumps({
        "type": "FeatureCollection",
        "features": [{
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [121.5, 31.2]},
            "properties": {"name": "校门", "radius": 200, "kind": "speed_limit", "speed_limit": 30,
                           "speedlimit": 20, "x_colour": "red", "stroke": "#f00"},
        }],
    }, ensure_ascii=False))  # fmt: skip
    result = fleetwatch("geofences", "import", str(path), "--db", db_url)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "unknown property 'speedlimit' (did you mean 'speed_limit'?)" in result.stderr
    assert "known properties are name, kind, shape, radius, width, speed_limit" in result.stderr
    assert "x_colour" not in result.stderr and "'stroke'" not in result.stderr


# ------------------------------------------------------------------ decode exit codes


def _frame(content_hex: str) -> str:
    content = bytes.fromhex(content_hex)
    return (b"\x7e" + content + bytes([check_code(content)]) + b"\x7e").hex()


HEARTBEAT = "7E00020000040021679287002B7D027E"  # a real one: its check code 0x7E escaped
BAD_ESCAPE = _frame("0002000204002167928700017D03")  # 0x7D 0x03 inside, check code right
BAD_CHECK = HEARTBEAT[:-6] + "017E"


@pytest.mark.parametrize(
    ("frames", "options", "status"),
    [
        ([HEARTBEAT], [], 0),
        ([BAD_ESCAPE], [], 1),
        ([BAD_ESCAPE], ["--lenient"], 0),
        ([BAD_ESCAPE], ["--explain"], 1),
        ([BAD_CHECK], [], 1),
        ([BAD_CHECK], ["--lenient"], 0),
        ([HEARTBEAT, "7E0002"], [], 1),
        (["zz"], [], 1),
        ([HEARTBEAT, BAD_ESCAPE], [], 1),
    ],
)
def test_decode_exit_status(frames: list[str], options: list[str], status: int) -> None:
    result = fleetwatch("decode", *options, *frames)
    assert result.returncode == status, result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    if options == [] and BAD_ESCAPE in frames:
        assert "invalid escape" in result.stdout


def test_mask_url() -> None:
    assert mask_url("postgresql://fleet:s3cr3t@db:5432/fw") == "postgresql://fleet:***@db:5432/fw"
    assert mask_url("postgresql://fleet@db/fw") == "postgresql://fleet@db/fw"


# ------------------------------------------------------------------ serve: banner and JSON log


async def _serve(db: str, data: Path, jt808: int, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleetwatch.cli", "serve", "--db", db, "--data-dir", str(data),
        "--jt808-port", str(jt808), "--http-port", str(_free_port()), "--host", "127.0.0.1",
        *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


async def _wait_for(proc: asyncio.subprocess.Process, text: str, seen: list[str]) -> None:
    assert proc.stderr is not None
    async with asyncio.timeout(60):
        while not any(text in line for line in seen):
            line = await proc.stderr.readline()
            if not line:
                raise AssertionError(f"serve ended before {text!r}: {''.join(seen)[-2000:]}")
            seen.append(line.decode())


async def _stop(proc: asyncio.subprocess.Process, seen: list[str]) -> None:
    proc.send_signal(signal.SIGINT)
    _, rest = await asyncio.wait_for(proc.communicate(), 60)
    seen.extend(rest.decode().splitlines(keepends=True))
    assert proc.returncode == 0, "".join(seen)[-2000:]


def _with_password(url: str) -> str:
    """The test cluster trusts local users: a password in the URL is accepted and ignored."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:hunter2@{parts.hostname or ''}"))


@aio_test
async def test_serve_banner(db_url: str, short_tmp: Path) -> None:
    jt808 = _free_port()
    proc = await _serve(_with_password(db_url), short_tmp / "data", jt808)
    seen: list[str] = []
    try:
        await _wait_for(proc, "stop with", seen)
    finally:
        await _stop(proc, seen)
    text = "".join(seen)
    start = text.index("FleetWatch ")
    banner = text[start:].splitlines()[:7]
    assert re.fullmatch(r"FleetWatch \S+ serving \(pid \d+\)", banner[0])
    assert banner[1].split() == ["data", "dir", str((short_tmp / "data").absolute())]
    assert banner[2].startswith("  database   postgresql://postgres:***@")
    assert "hunter2" not in text
    assert banner[3].split() == ["JT/T", "808", f"127.0.0.1:{jt808}"]
    assert re.fullmatch(r"  dashboard +http://127\.0\.0\.1:\d+/", banner[4])
    assert re.fullmatch(r"  metrics +http://127\.0\.0\.1:\d+/metrics", banner[5])
    assert "Ctrl-C" in banner[6] and "kill -TERM" in banner[6]
    assert "Traceback" not in text


@aio_test
async def test_serve_json_log_is_flat_and_tells_the_story(db_url: str, short_tmp: Path) -> None:
    jt808 = _free_port()
    proc = await _serve(db_url, short_tmp / "data", jt808, "--log-format", "json")
    seen: list[str] = []
    try:
        await _wait_for(proc, "FleetWatch", seen)
        terminal = await Terminal.connect(jt808, "13955550001")
        await terminal.login("沪A55551")
        sos = report(0)
        sos.alarm = 1  # emergency: an alert is opened
        sos.time = datetime.now(UTC).astimezone(BEIJING).replace(microsecond=0)
        await terminal.send(sos)
        assert (await terminal.receive()).body.result == 0
        stranger = await Terminal.connect(jt808, "13955550002")
        await stranger.send(Authenticate(auth_code="wrong"))
        assert (await stranger.receive()).body.result != 0
        await _wait_for(proc, "opened", seen)
        await terminal.close()
        await stranger.close()
    finally:
        await _stop(proc, seen)
    events = [json.loads(line) for line in seen if line.strip()]  # every line is one object
    for event in events:
        assert list(event)[:4] == ["ts", "level", "logger", "msg"], event
        assert all(not isinstance(v, dict | list) for v in event.values()), event  # flat
        stamp = datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))
        assert event["ts"].endswith("Z") and stamp.utcoffset() == timedelta(0)
        assert event["level"] in ("debug", "info", "warning", "error", "critical")
        assert "log_namespace" not in event and "log_format" not in event
    msgs = [e["msg"] for e in events]

    def find(pattern: str) -> dict[str, object]:
        found = [e for e in events if re.search(pattern, e["msg"])]
        assert found, f"no log line matching {pattern!r} in {msgs}"
        return found[0]

    assert find(r"^connection from 127\.0\.0\.1:\d+$")["peer"]
    registered = find(r"terminal 013955550001 registered from .* \(plate 沪A55551\)")
    assert registered["phone"] == "013955550001" and registered["level"] == "info"
    authenticated = find(r"terminal 013955550001 authenticated from .*: vehicle \d+")
    assert isinstance(authenticated["vehicle_id"], int)
    refused = find(r"authentication failed for 013955550002")
    assert refused["level"] == "warning"
    opened = find(r"alert \d+ opened: terminal_alarm of vehicle \d+")
    assert str(opened["logger"]).endswith(".supervision") and opened["level"] == "info"
    assert find(r"^FleetWatch \S+ serving$")["database"] == mask_url(db_url)
