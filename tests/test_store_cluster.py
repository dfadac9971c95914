"""The embedded cluster: first start, restart with the same data, crash leftovers, socket paths.

Creating a cluster (initdb + PostGIS) takes about a second, so the module creates one ``seed``
cluster and each test works on a copy (``cp -a`` keeps the server user's ownership; a stopped
data directory may be moved or copied freely).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

import store.cluster as cluster_module
from store.cluster import MAX_SOCKET_PATH, ClusterError, EmbeddedCluster, pg_bin
from tests.aio import aio_test

URL = re.compile(r"^postgresql://postgres@/fleetwatch\?host=(/[^&]+)&port=(\d+)$")


@pytest.fixture(scope="module")
def seed() -> Iterator[tuple[Path, float]]:
    """A created, stopped cluster to copy, and how long its first start took."""
    base = Path(tempfile.mkdtemp(prefix="fwt-", dir="/tmp"))
    base.chmod(0o755)
    cluster = EmbeddedCluster(base / "pg", durable=False)
    try:
        started = time.monotonic()
        assert cluster.start() is True
        first_start = time.monotonic() - started
        cluster.stop()
        yield cluster.data_dir, first_start
    finally:
        cluster.stop(mode="immediate")
        subprocess.run(["rm", "-rf", str(base)], check=True)


def copy_of(seed: tuple[Path, float], target: Path, durable: bool = False) -> EmbeddedCluster:
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(seed[0]), str(target)], check=True)
    return EmbeddedCluster(target, durable=durable)


async def query(url: str, sql: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


@aio_test
async def test_url_works_with_asyncpg_and_psql(pg_cluster: EmbeddedCluster) -> None:
    url = pg_cluster.url
    match = URL.match(url)
    assert match, url
    assert Path(match.group(1)) == pg_cluster.socket_dir == pg_cluster.data_dir / "run"
    assert await query(url, "SELECT current_database()") == "fleetwatch"
    assert await query(url, "SELECT extname FROM pg_extension WHERE extname = 'postgis'")
    assert await query(url, "SHOW listen_addresses") == ""  # unix socket only
    assert await query(url, "SHOW fsync") == "off"  # durable=False
    psql = pg_bin() / "psql"
    proc = await asyncio.to_thread(
        subprocess.run,
        [str(psql), url, "-XAtc", "SELECT current_user || ' ' || postgis_lib_version()"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("postgres 3.")
    # Only the server user (and root) may reach the socket: trust auth is safe with that.
    assert pg_cluster.socket_dir.stat().st_mode & 0o777 == 0o700


def test_first_start_was_fast_and_made_the_database(seed: tuple[Path, float]) -> None:
    data_dir, first_start = seed
    assert first_start < 10, f"first start took {first_start:.1f} s"
    assert (data_dir / "pgdata" / "PG_VERSION").is_file()
    assert (data_dir / ".bootstrapped").is_file()
    assert not (data_dir / "pgdata.initdb").exists()
    if os.geteuid() == 0:  # the server runs as an unprivileged user that owns the cluster
        assert pwd.getpwuid(data_dir.stat().st_uid).pw_name in ("postgres", "fleetwatch-pg")


@aio_test
async def test_stop_and_restart_reuse_the_data(seed: tuple[Path, float], short_tmp: Path) -> None:
    cluster = copy_of(seed, short_tmp / "pg")
    pgdata_inode = cluster.pgdata.stat().st_ino
    assert not cluster.running
    with pytest.raises(ClusterError, match="not running"):
        _ = cluster.url
    assert cluster.start() is True
    assert cluster.running and cluster.owned
    await query(cluster.url, "CREATE TABLE kept AS SELECT 42 AS answer")

    # Another user of the same directory attaches to the running server and leaves it running.
    with EmbeddedCluster(cluster.data_dir) as other:
        assert not other.owned
        assert await query(other.url, "SELECT answer FROM kept") == 42
    assert cluster.running

    cluster.stop()
    assert not cluster.running
    assert not (cluster.data_dir / "run" / ".s.PGSQL.5432").exists()
    cluster.stop()  # stopping a stopped cluster is a no-op

    durable = EmbeddedCluster(cluster.data_dir, durable=True)
    started = time.monotonic()
    assert durable.start() is True
    assert time.monotonic() - started < 5
    try:
        assert durable.pgdata.stat().st_ino == pgdata_inode  # no second initdb
        assert await query(durable.url, "SELECT answer FROM kept") == 42
        assert await query(durable.url, "SHOW fsync") == "on"
    finally:
        durable.stop()


@aio_test
async def test_context_manager_starts_and_stops(seed: tuple[Path, float], short_tmp: Path) -> None:
    with copy_of(seed, short_tmp / "pg") as cluster:
        assert cluster.running
        assert await query(cluster.url, "SELECT 1") == 1
    assert not cluster.running


@aio_test
async def test_start_after_a_crash(seed: tuple[Path, float], short_tmp: Path) -> None:
    cluster = copy_of(seed, short_tmp / "pg", durable=True)
    cluster.start()
    await query(cluster.url, "CREATE TABLE survivor AS SELECT 7 AS n")
    pid = cluster.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the postmaster dies; postmaster.pid stays behind
    deadline = time.monotonic() + 10
    while cluster.running and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not cluster.running
    assert (cluster.pgdata / "postmaster.pid").exists()

    assert cluster.start() is True  # waits out unreaped processes and old backends
    try:
        assert await query(cluster.url, "SELECT n FROM survivor") == 7
    finally:
        cluster.stop(mode="immediate")


@aio_test
async def test_stale_pid_file_whose_pid_was_reused(
    seed: tuple[Path, float], short_tmp: Path
) -> None:
    cluster = copy_of(seed, short_tmp / "pg")
    cluster.start()
    pid_file = cluster.pgdata / "postmaster.pid"
    lines = pid_file.read_text().splitlines()
    cluster.stop(mode="immediate")
    # After a reboot the recorded pid belongs to some other program of the same user: PostgreSQL
    # alone refuses to start then ("lock file already exists").
    owner = cluster.pgdata.stat()
    squatter = subprocess.Popen(["sleep", "30"], user=owner.st_uid, group=owner.st_gid)
    try:
        pid_file.write_text("\n".join([str(squatter.pid), *lines[1:]]) + "\n")
        assert not cluster.running
        assert cluster.start() is True
        assert await query(cluster.url, "SELECT 1") == 1
        assert cluster.pid != squatter.pid
        cluster.stop(mode="immediate")

        # A dead pid (the common crash case) is handled too.
        dead = subprocess.Popen(["true"])
        dead.wait()
        pid_file.write_text("\n".join([str(dead.pid), *lines[1:]]) + "\n")
        assert not cluster.running
        assert cluster.start() is True
        cluster.stop(mode="immediate")
    finally:
        squatter.kill()
        squatter.wait()


@aio_test
async def test_long_data_dir_gets_a_short_socket_dir(
    seed: tuple[Path, float], short_tmp: Path
) -> None:
    # The in-tree socket would be DIR/run/.s.PGSQL.5432: pad DIR to land exactly on the limit.
    suffix = "/run/.s.PGSQL.5432"
    pad = MAX_SOCKET_PATH - len(str(short_tmp)) - len("/") - len(suffix)
    at_limit = short_tmp / ("d" * pad)
    cluster = copy_of(seed, at_limit)
    assert len(str(at_limit) + suffix) == MAX_SOCKET_PATH
    cluster.start()
    try:
        assert cluster.socket_dir == at_limit / "run"
    finally:
        cluster.stop()

    over = short_tmp / ("d" * (pad + 1))
    at_limit.rename(over)  # a stopped cluster can move
    cluster = EmbeddedCluster(over, durable=False)
    cluster.start()
    try:
        socket_dir = cluster.socket_dir
        assert socket_dir.parent == Path("/tmp") and socket_dir.name.startswith("fwpg-")
        assert len(str(socket_dir / ".s.PGSQL.5432")) <= MAX_SOCKET_PATH
        assert await query(cluster.url, "SELECT current_database()") == "fleetwatch"
        # Another process finds the temporary socket through postmaster.pid.
        assert EmbeddedCluster(over).url == cluster.url
    finally:
        cluster.stop()
    assert not socket_dir.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="root only: the server runs as another user")
def test_data_dir_the_server_user_cannot_reach(short_tmp: Path) -> None:
    locked = short_tmp / "home"
    locked.mkdir(mode=0o700)
    cluster = EmbeddedCluster(locked / "fleetwatch" / "pg", durable=False)
    with pytest.raises(ClusterError, match="not searchable") as info:
        cluster.start()
    assert str(locked) in str(info.value) and "setfacl" in str(info.value)
    assert not cluster.running and not cluster.initialized


def test_pg_bin_picks_the_right_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for version in ("9.6", "15", "16"):
        bin_dir = tmp_path / version / "bin"
        bin_dir.mkdir(parents=True)
        for tool in ("initdb", "pg_ctl"):
            (bin_dir / tool).write_text("")
    monkeypatch.delenv("PGBIN", raising=False)
    monkeypatch.setattr(cluster_module, "PG_LIB_DIR", tmp_path)
    assert pg_bin() == tmp_path / "16" / "bin"  # newest, numerically (not "9.6")
    assert pg_bin("15") == tmp_path / "15" / "bin"  # the version the data directory needs
    with pytest.raises(ClusterError, match="created by PostgreSQL 14"):
        pg_bin("14")
    monkeypatch.setenv("PGBIN", str(tmp_path / "9.6" / "bin"))
    assert pg_bin() == tmp_path / "9.6" / "bin"


def test_pg_bin_missing_says_to_run_make_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGBIN", raising=False)
    monkeypatch.setattr(cluster_module, "PG_LIB_DIR", tmp_path / "nothing")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ClusterError, match="make setup"):
        pg_bin()
