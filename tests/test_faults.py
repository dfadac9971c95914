"""Fault injection: ``fleetwatch serve`` killed, its PostgreSQL killed or frozen, restarted with
fewer workers, its spool at its budget. Every check counts from what the terminals were told
(``tests.fault_harness.Record``) and what the database holds afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocols.jt808 import Authenticate
from store.cluster import EmbeddedCluster
from tests.aio import aio_test
from tests.fault_harness import (
    REPO,
    Fleet,
    Serve,
    alive,
    check_exactly_once,
    copy_data_dir,
    make_template,
    percentile,
    postgres_pids,
    remove,
    signal_postgres,
    spool_files,
    streaming,
    wait_until,
)
from tests.terminal_client import Terminal


@pytest.fixture(scope="module")
def serve_template() -> Iterator[Path]:
    """A migrated, durable embedded cluster in a data dir (stopped), copied by each test."""
    directory = Path(tempfile.mkdtemp(prefix="fwf-", dir="/tmp"))
    directory.chmod(0o755)
    try:
        yield make_template(directory)
    finally:
        remove(directory)


@pytest.fixture
def data(serve_template: Path, short_tmp: Path) -> Iterator[Path]:
    target = copy_data_dir(serve_template, short_tmp / "data")
    try:
        yield target
    finally:  # whatever a failed test left running
        cluster = EmbeddedCluster.in_data_dir(target)
        signal_postgres(target, signal.SIGCONT)
        if cluster.running:
            cluster.stop(mode="immediate")


def _url(data: Path) -> str:
    return EmbeddedCluster.in_data_dir(data).url


@pytest.mark.parametrize(
    ("workers", "sig"),
    [(1, signal.SIGKILL), (2, signal.SIGKILL), (2, signal.SIGTERM)],
    ids=["kill-9-1-worker", "kill-9-2-workers", "sigterm-2-workers"],
)
@aio_test
async def test_serve_killed_or_stopped_mid_stream_then_restarted(
    data: Path, workers: int, sig: int
) -> None:
    serve = Serve(data, workers=workers).start()
    try:
        fleet = await streaming(serve, 6, 1.5)
        others = serve.worker_pids()
        assert len(others) == workers - 1
        assert serve.proc is not None
        serve.proc.send_signal(sig)  # to worker 0, while the terminals stream
        code = await asyncio.to_thread(serve.proc.wait, 60)
        assert code == (0 if sig == signal.SIGTERM else -9), serve.tail()
        # No orphan keeps serving: the other workers stop with their parent.
        await wait_until(lambda: not any(alive(p) for p in others), 20, "workers follow worker 0")
        before = len(fleet.record.acked)
        assert before > 100
        serve = Serve(data, workers=workers, port=serve.port, http=serve.http).start()
        await serve.ready()
        await wait_until(lambda: len(fleet.record.acked) > before + 100, 20, "acks after restart")
        await fleet.stop()
        await wait_until(lambda: not any(spool_files(data)), 20, "spools replayed")
        rows = await check_exactly_once(_url(data), fleet.record)
        assert len(rows) >= len(fleet.record.acked)
        assert fleet.reconnects >= 6  # every terminal was cut off and came back
    finally:
        if serve.proc and serve.proc.poll() is None:
            assert await serve.stop() == 0, serve.tail()


@aio_test
async def test_kill_9_of_postgresql_serve_restarts_it_and_acks_keep_flowing(data: Path) -> None:
    serve = Serve(data).start()
    try:
        fleet = await streaming(serve, 4, 1.0)
        killed_at = time.monotonic()
        killed = signal_postgres(data, signal.SIGKILL)
        assert killed
        await asyncio.sleep(3.0)
        during = fleet.record.latencies(since=killed_at)
        assert len(during) > 200, "acks stopped while PostgreSQL was down"
        assert percentile(during, 0.99) < 0.5  # 250 ms in loadtest/fault_stall.py; CI headroom
        # (the killed postmaster may still be listed for a moment: wait for a new one)
        await wait_until(lambda: postgres_pids(data)[:1] not in ([], killed[:1]), 30,
                         "PostgreSQL started again")  # fmt: skip
        await wait_until(lambda: not any(spool_files(data)), 30, "spool replayed")
        await fleet.stop()
        await check_exactly_once(_url(data), fleet.record)
        assert fleet.record.unanswered == 0 and fleet.reconnects == 0
        assert "starting it again" in serve.tail(100_000)
    finally:
        assert await serve.stop() == 0, serve.tail()


@aio_test
async def test_postgresql_frozen_acks_from_the_spool_and_known_terminals_authenticate(
    data: Path,
) -> None:
    serve = Serve(data).start()
    try:
        await serve.ready()
        fleet = Fleet(serve.port, 4)
        await fleet.login()
        known = await Terminal.connect(serve.port, "13920000001")
        code = await known.login("沪F20001")
        await known.close()
        fleet.start()
        await asyncio.sleep(1.0)
        stopped_at = time.monotonic()
        assert signal_postgres(data, signal.SIGSTOP)
        try:
            await asyncio.sleep(0.5)
            known = await Terminal.connect(serve.port, "13920000001")
            await known.send(Authenticate(auth_code=code))
            answer = await known.receive(5)  # from the cache: the database cannot answer
            assert (answer.msg_id, answer.body.result) == (0x8001, 0)
            await known.close()
            await asyncio.sleep(2.5)
        finally:
            resumed_at = time.monotonic()
            signal_postgres(data, signal.SIGCONT)
        during = fleet.record.latencies(since=stopped_at, until=resumed_at - 0.5)
        assert len(during) > 200, "acks stopped while PostgreSQL was frozen"
        assert percentile(during, 0.99) < 0.5  # 250 ms in loadtest/fault_stall.py; CI headroom
        await wait_until(lambda: not any(spool_files(data)), 30, "spool replayed")
        await fleet.stop()
        await check_exactly_once(_url(data), fleet.record)
        assert fleet.record.unanswered == 0
    finally:
        signal_postgres(data, signal.SIGCONT)
        assert await serve.stop() == 0, serve.tail()


@aio_test
async def test_restart_with_fewer_workers_replays_every_spool_without_traffic(data: Path) -> None:
    serve = Serve(data, workers=2).start()
    try:
        fleet = await streaming(serve, 12, 0.5)  # spread over both workers by the kernel
        signal_postgres(data, signal.SIGSTOP)  # from now on every ack comes from a spool
        await asyncio.sleep(1.5)
        await fleet.stop()
        others = serve.worker_pids()
        serve.kill()
        for pid in others:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    finally:
        signal_postgres(data, signal.SIGCONT)
    spooled = {p.parent.name for p in spool_files(data)}
    assert spooled == {"worker-0", "worker-1"}, spooled
    assert len(fleet.record.acked) > 100
    serve = Serve(data, workers=1).start()  # and no terminal connects
    try:
        await serve.ready()
        await wait_until(lambda: not any(spool_files(data)), 30, "both spools replayed")
        await check_exactly_once(_url(data), fleet.record)
    finally:
        assert await serve.stop() == 0, serve.tail()


@aio_test
async def test_spool_budget_refuses_new_reports_and_loses_no_acknowledged_one(data: Path) -> None:
    serve = Serve(data, extra=("--spool-budget-mb", "1")).start()
    try:
        fleet = await streaming(serve, 4, 0.5, rate=400, window=32, give_up=1.0)
        signal_postgres(data, signal.SIGSTOP)
        try:
            await wait_until(lambda: fleet.record.unanswered > 50, 30, "the spool fills up")
            full = len(fleet.record.acked)
            await asyncio.sleep(1.0)
            assert len(fleet.record.acked) - full < 100  # refused, not acked and dropped
        finally:
            signal_postgres(data, signal.SIGCONT)
        await wait_until(lambda: len(fleet.record.acked) > full + 200, 30, "acks resume")
        await fleet.stop()
        await wait_until(lambda: not any(spool_files(data)), 30, "spool replayed")
        await check_exactly_once(_url(data), fleet.record)
        assert "at its budget" in serve.tail(1_000_000)
    finally:
        signal_postgres(data, signal.SIGCONT)
        assert await serve.stop() == 0, serve.tail()


@aio_test
async def test_dead_worker_restarted_metrics_of_every_worker_http_on_its_own_address(
    data: Path,
) -> None:
    serve = Serve(data, workers=2, extra=("--http-listen", "127.0.0.2")).start()
    try:
        fleet = await streaming(serve, 12, 1.5)  # spread over both workers by the kernel
        await fleet.stop()

        def scrape(host: str) -> str:
            with urllib.request.urlopen(f"http://{host}:{serve.http}/metrics", timeout=5) as r:
                return str(r.read().decode())

        def positions(values: dict[str, float]) -> float:
            return sum(v for k, v in values.items() if k.startswith("fleetwatch_positions_total"))

        acked = len(fleet.record.acked)
        deadline = time.monotonic() + 15
        while True:  # worker 1 publishes its metrics once a second
            text = await asyncio.to_thread(scrape, "127.0.0.2")
            values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                      if line and not line.startswith("#")}  # fmt: skip
            if positions(values) == acked or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert positions(values) == acked, (positions(values), acked)
        own = json.loads((data / "run" / "metrics" / "worker-1.json").read_text())
        assert (
            0
            < sum(v for name, _, v in own["counters"] if name == "fleetwatch_positions_total")
            < acked
        )  # both workers served
        with pytest.raises(urllib.error.URLError):
            await asyncio.to_thread(scrape, "127.0.0.1")  # terminals' address, not HTTP's
        assert values["fleetwatch_rows_written_total"] + values[
            "fleetwatch_rows_spooled_total"] == acked  # fmt: skip
        assert "# TYPE fleetwatch_rows_written_total counter" in text
        assert values['fleetwatch_registrations_total{result="0"}'] == 12
        (worker,) = serve.worker_pids()
        os.kill(worker, signal.SIGKILL)
        await wait_until(lambda: [p for p in serve.worker_pids() if p != worker and alive(p)],
                         15, "the dead worker started again")  # fmt: skip
        assert "exited with -9" in serve.tail(100_000)
    finally:
        assert await serve.stop() == 0, serve.tail()


def test_http_listens_on_localhost_unless_told() -> None:
    from fleetwatch.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert (args.listen, args.http_listen) == ("0.0.0.0", "127.0.0.1")
    args = build_parser().parse_args(["serve", "--host", "127.0.0.1", "--http-listen", "::1"])
    assert (args.listen, args.http_listen) == ("127.0.0.1", "::1")


def test_a_worker_stops_once_its_parent_is_not_the_one_that_started_it() -> None:
    from fleetwatch.processes import ParentWatch

    stops: list[int] = []
    ParentWatch(os.getppid(), lambda: stops.append(1)).check()
    assert stops == []
    gone = ParentWatch(os.getppid() + 1_000_000, lambda: stops.append(1))  # not our parent
    gone.check()
    gone.check()
    assert stops == [1]  # once
    # started after its parent died (in a child: the call marks the calling process)
    check = (
        "import os, sys; from fleetwatch.processes import die_with_parent as d; "
        "sys.exit(10 * d(os.getppid()) + d(os.getppid() + 1_000_000))"
    )
    assert subprocess.run([sys.executable, "-c", check], cwd=REPO).returncode == 10


@aio_test
async def test_a_2099_fix_and_an_untimed_report_retransmitted_across_a_kill_9(data: Path) -> None:
    """Issue 11 item 6 under a crash: a fix dated 2099 does not hold the last position (not
    even through the start-up catch-up), and a report without a valid time, acknowledged, then
    sent again with its serial after kill -9 and a restart, is stored once (its key does not
    depend on when it arrived, nor on the process that received it)."""
    from datetime import UTC, datetime, timedelta

    import asyncpg

    from protocols.jt808 import BEIJING
    from tests.terminal_client import report

    now = datetime.now(UTC).astimezone(BEIJING).replace(microsecond=0)
    acked: list[int] = []

    async def send(terminal: Terminal, body: object, serial: int | None = None) -> int:
        serial = await terminal.send(body, serial)  # type: ignore[arg-type]
        ack = await terminal.receive()
        assert (ack.msg_id, ack.body.reply_serial, ack.body.result) == (0x8001, serial, 0)
        acked.append(serial)
        return serial

    normal, future, untimed, later = report(0), report(1), report(2), report(3)
    normal.time, later.time = now - timedelta(seconds=30), now - timedelta(seconds=5)
    future.time, future.alarm = datetime(2099, 1, 1, 8, tzinfo=BEIJING), 1
    untimed.time = None
    serve = Serve(data).start()
    try:
        await serve.ready()
        terminal = await Terminal.connect(serve.port, "13955500001")
        await terminal.login("京F20990")
        await send(terminal, normal)
        await send(terminal, future)
        untimed_serial = await send(terminal, untimed)
        serve.kill()  # the ack was sent; say the terminal never saw it
        serve = Serve(data, port=serve.port, http=serve.http).start()
        await serve.ready()
        terminal = await Terminal.connect(serve.port, "13955500001")
        await terminal.login("京F20990")  # the same terminal, registering again
        await send(terminal, untimed, untimed_serial)
        await send(terminal, later)
        conn = await asyncpg.connect(_url(data))
        try:
            rows = await conn.fetch(
                "SELECT p.fix_time, p.extras FROM positions p JOIN vehicles v"
                " ON v.id = p.vehicle_id WHERE v.phone = '13955500001' ORDER BY p.fix_time"
            )
            assert len(acked) == 5 and len(rows) == 4, [r["fix_time"] for r in rows]
            flags = [set(json.loads(r["extras"] or "{}")) & {"time_invalid", "time_ahead"}
                     for r in rows]  # fmt: skip
            assert flags == [{"time_invalid"}, set(), set(), {"time_ahead"}]

            async def last() -> datetime | None:
                return await conn.fetchval(  # type: ignore[no-any-return]
                    "SELECT lp.fix_time FROM last_positions lp JOIN vehicles v"
                    " ON v.id = lp.vehicle_id WHERE v.phone = '13955500001'"
                )

            for _ in range(60):
                if await last() == later.time:
                    break
                await asyncio.sleep(0.1)
            assert await last() == later.time
        finally:
            await conn.close()
    finally:
        if serve.proc and serve.proc.poll() is None:
            assert await serve.stop() == 0, serve.tail()
