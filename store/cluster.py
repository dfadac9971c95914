"""The embedded PostgreSQL+PostGIS cluster: ``fleetwatch serve`` without ``--db``, and the tests.

A private server that listens on a unix socket only (``listen_addresses=''``), so no port can
clash and ``trust`` authentication is safe: the socket directory is mode 0700, so only the user
the server runs as (and root) can reach it.

Layout of ``data_dir`` (the cluster's own directory; ``fleetwatch`` puts it at
``<data dir>/postgres``, see :meth:`EmbeddedCluster.in_data_dir`)::

    pgdata/        the PostgreSQL data directory (PGDATA)
    run/           the socket directory (unless its path is too long, see below)
    server.log     the server log (pg_ctl -l)
    .bootstrapped  written once database ``fleetwatch`` and PostGIS exist

Root: PostgreSQL refuses to run as root, so the server runs as ``postgres`` (the Debian package
creates it; else a system user ``fleetwatch-pg`` is created) via ``runuser``, and ``data_dir`` is
chowned to it. Every directory above ``data_dir`` must be searchable by that user; when one is
not (a data dir under /root, mode 0700) :meth:`start` fails and names the directory, instead of
moving the data somewhere the operator did not ask for or loosening /root's permissions.
An existing cluster always runs as the owner of its ``pgdata``, so ownership never flips.

Socket path: a unix socket path is limited to 107 bytes. When ``data_dir/run/.s.PGSQL.<port>``
would be longer, each start makes a fresh 0700 directory ``/tmp/fwpg-XXXXXX`` and removes it on
stop. PostgreSQL records the socket directory and port in ``pgdata/postmaster.pid``; :attr:`url`
reads them from there, so another process (``fleetwatch db url``, ``vehicles ...``) finds a
server that ``fleetwatch serve`` started.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from types import TracebackType

#: Where Debian/Ubuntu install the server binaries (one directory per major version).
PG_LIB_DIR = Path("/usr/lib/postgresql")
#: The application database created on first start (the URL's database).
DATABASE = "fleetwatch"
#: The superuser that initdb creates; with ``trust`` it is also the user in the URL.
SUPERUSER = "postgres"
#: The server runs as this user when started by root (created as ``FALLBACK_RUN_AS`` if absent).
RUN_AS, FALLBACK_RUN_AS = "postgres", "fleetwatch-pg"
#: Longest unix socket path (``sun_path`` is 108 bytes including the terminating NUL).
MAX_SOCKET_PATH = 107
#: Prefix of the short socket directories made under /tmp when ``data_dir/run`` is too long.
TMP_SOCKET_PREFIX = "fwpg-"
#: Settings for a write-heavy track store that keep crash safety: a bigger buffer cache, fewer
#: checkpoints (each one writes full-page images of every page touched afterwards), and autovacuum
#: looking every 5 s instead of every minute, so the constantly updated last-position table is
#: vacuumed before its dead row versions slow the writer down (migration 0005).
TUNING_OPTIONS = ("-c", "shared_buffers=256MB", "-c", "max_wal_size=4GB",
                  "-c", "checkpoint_timeout=15min", "-c", "autovacuum_naptime=5s")  # fmt: skip
#: Settings that trade crash safety for speed; only for throwaway (test) clusters.
NON_DURABLE_OPTIONS = ("-F", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")


#: Start failures that clear up by themselves after a crash: the killed postmaster is not
#: reaped yet (its lock files look alive), or its backends still hold the shared memory.
_CRASH_LEFTOVERS = ("already exists", "pre-existing shared memory block")


class ClusterError(RuntimeError):
    """The embedded cluster cannot be found, set up, started or stopped (message says why)."""


def _major(path: Path) -> tuple[int, ...]:
    """Version key of ``/usr/lib/postgresql/<version>`` ("15" < "9.6" would be wrong as text)."""
    return tuple(int(part) for part in re.findall(r"\d+", path.name)) or (0,)


def pg_bin(version: str | None = None) -> Path:
    """The directory holding ``initdb``/``pg_ctl``/``psql``.

    ``$PGBIN`` if set; else ``/usr/lib/postgresql/<version>/bin`` when the cluster's major version
    is known (a newer package next to it must not try to open an older data directory), else the
    newest ``/usr/lib/postgresql/*/bin`` (Debian keeps them off PATH), else ``initdb`` on PATH.
    """
    env = os.environ.get("PGBIN")
    if env:
        if not (Path(env) / "pg_ctl").is_file():
            raise ClusterError(f"PGBIN={env} has no pg_ctl")
        return Path(env)
    if version is not None:
        exact = PG_LIB_DIR / version / "bin"
        if (exact / "pg_ctl").is_file():
            return exact
    candidates = (
        [d / "bin" for d in PG_LIB_DIR.glob("*") if (d / "bin" / "initdb").is_file()]
        if PG_LIB_DIR.is_dir()
        else []
    )
    if candidates:
        best = max(candidates, key=lambda b: _major(b.parent))
        if version is not None and best.parent.name != version:
            raise ClusterError(
                f"the cluster was created by PostgreSQL {version}, but only "
                f"{best.parent.name} is installed; install postgresql-{version} (or upgrade the "
                "cluster with pg_upgrade)"
            )
        return best
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    raise ClusterError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or "
        "on PATH: run `make setup` (installs postgresql-15-postgis-3), or set PGBIN"
    )


def _run_as_user() -> str:
    """The unprivileged user a root-started server runs as (created if it does not exist)."""
    for name in (RUN_AS, FALLBACK_RUN_AS):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
         FALLBACK_RUN_AS],
        check=True, capture_output=True,
    )  # fmt: skip
    return FALLBACK_RUN_AS


def _not_searchable_by(path: Path, user: str) -> Path | None:
    """The first directory from / down to ``path``'s parent that ``user`` cannot traverse.

    Mode bits decide; a directory they reject is re-checked as that user with ``test -x``, so
    ACLs (``setfacl -m u:postgres:x``) that grant access are honoured.
    """
    pw = pwd.getpwnam(user)
    gids = set(os.getgrouplist(user, pw.pw_gid))
    for directory in reversed(path.parents):
        st = directory.stat()
        if st.st_uid == pw.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if st.st_mode & bit:
            continue
        probe = subprocess.run(
            ["runuser", "-u", user, "--", "test", "-x", str(directory)],
            capture_output=True,
            cwd="/",
        )
        if probe.returncode != 0:
            return directory
    return None


def _process_state(pid: int) -> str:
    """``"postgres"``, ``"dead"``, or ``"other"`` (the pid of a crashed server was reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        pass  # alive, owned by another user
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return "dead"  # a zombie: exited, not reaped yet
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return "dead" if Path("/proc/self").exists() else "postgres"  # exited, or no /proc
    except OSError:
        return "postgres"  # unreadable: do not second-guess a live pid
    return "postgres" if b"postgres" in cmdline or b"postmaster" in cmdline else "other"


class EmbeddedCluster:
    """A private PostgreSQL+PostGIS server in ``data_dir``; created on first :meth:`start`.

    ``durable=False`` (tests) turns off fsync, synchronous commit and full-page writes: a crash
    may then lose or corrupt data, which only a throwaway cluster can accept.
    """

    def __init__(self, data_dir: Path | str, durable: bool = True, port: int = 5432) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.durable = durable
        self.port = port  # only names the socket file; the socket directory is private
        self._started = False  # this object started the server (so it is the one to stop it)

    @classmethod
    def in_data_dir(cls, data_dir: Path | str, durable: bool = True) -> EmbeddedCluster:
        """The cluster of a FleetWatch data directory (``<data dir>/postgres``).

        A subdirectory, so that chowning it to the server user leaves the rest of the data
        directory (media, spool) to the application.
        """
        return cls(Path(data_dir) / "postgres", durable=durable)

    # ------------------------------------------------------------------ paths and state

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def initialized(self) -> bool:
        """Whether initdb has completed here (a half-made cluster is never renamed into place)."""
        try:
            return (self.pgdata / "PG_VERSION").is_file()
        except PermissionError:
            raise self._foreign() from None

    def _foreign(self) -> ClusterError:
        """The error for a cluster that belongs to another user (and we are not root)."""
        try:
            owner = pwd.getpwuid(self.data_dir.stat().st_uid).pw_name
        except (OSError, KeyError):
            owner = "another user"
        return ClusterError(
            f"the PostgreSQL cluster in {self.data_dir} belongs to {owner}: "
            f"run this as {owner} or as root"
        )

    @property
    def owned(self) -> bool:
        """Whether this object started the server (then it stops it on ``with`` exit)."""
        return self._started

    def _pid_file(self) -> list[str] | None:
        """``postmaster.pid`` lines (pid, data dir, start, port, socket dir, ...), or None."""
        try:
            return (self.pgdata / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PermissionError:
            raise self._foreign() from None

    def _recorded_pid(self) -> int | None:
        lines = self._pid_file()
        if not lines or not lines[0].strip().isdigit():
            return None
        return int(lines[0])

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while the server runs, else None (a stale pid file is ignored)."""
        pid = self._recorded_pid()
        return pid if pid is not None and _process_state(pid) == "postgres" else None

    @property
    def running(self) -> bool:
        """Whether a server (started by any process) is running on this data directory."""
        return self.pid is not None

    def _in_tree_socket_dir(self) -> Path:
        return self.data_dir / "run"

    def _socket_file_len(self, directory: Path) -> int:
        return len(os.fsencode(directory / f".s.PGSQL.{self.port}"))

    @property
    def socket_dir(self) -> Path:
        """Where the running server's socket is (from ``postmaster.pid``)."""
        lines = self._pid_file() if self.running else None
        if not lines or len(lines) < 5 or not lines[4].strip():
            raise ClusterError(f"the PostgreSQL cluster in {self.data_dir} is not running")
        return Path(lines[4].strip())

    @property
    def socket_port(self) -> int:
        lines = self._pid_file() if self.running else None
        if not lines or len(lines) < 4 or not lines[3].strip().isdigit():
            raise ClusterError(f"the PostgreSQL cluster in {self.data_dir} is not running")
        return int(lines[3])

    def url_for(self, database: str) -> str:
        """A libpq URL for ``database`` on the running server (asyncpg and psql accept it)."""
        host = urllib.parse.quote(str(self.socket_dir), safe="/")
        return (
            f"postgresql://{SUPERUSER}@/{urllib.parse.quote(database)}"
            f"?host={host}&port={self.socket_port}"
        )

    @property
    def url(self) -> str:
        """``postgresql://postgres@/fleetwatch?host=<socket dir>&port=<port>``."""
        return self.url_for(DATABASE)

    # ------------------------------------------------------------------ running commands

    def _user(self) -> str | None:
        """Who runs the server: None for "us" (not root), else a user name for ``runuser``."""
        if os.geteuid() != 0:
            return None
        if self.initialized:
            owner = pwd.getpwuid(self.pgdata.stat().st_uid).pw_name
            if owner == "root":
                raise ClusterError(f"{self.pgdata} is owned by root; PostgreSQL cannot run as root")
            return owner
        return _run_as_user()

    def _run(
        self, user: str | None, argv: list[str], what: str
    ) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", user, "--"] if user else []
        # cwd: the caller's may be unreadable for the server user (/root), which makes the
        # PostgreSQL tools warn or fail.
        proc = subprocess.run(
            [*prefix, *argv], capture_output=True, text=True, cwd=self.data_dir, env=self._env()
        )
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip()
            raise ClusterError(
                f"{what} failed (exit {proc.returncode}): {detail}{self._log_tail()}"
            )
        return proc

    @staticmethod
    def _env() -> dict[str, str]:
        """The environment minus libpq/PG variables that could point a tool somewhere else."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG") or k == "PGBIN"}
        env["LC_MESSAGES"] = "C"
        return env

    def _log_from(self, offset: int) -> str:
        try:
            with self.log_file.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _log_tail(self, lines: int = 15) -> str:
        try:
            tail = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return (
            "\n--- " + str(self.log_file) + " (last lines) ---\n" + "\n".join(tail) if tail else ""
        )

    def _psql(self, database: str, sql: str) -> str:
        bin_dir = pg_bin(self._version())
        proc = self._run(
            None,
            [
                str(bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.socket_port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ],
            f"psql ({sql[:40]})",
        )
        return proc.stdout

    def _version(self) -> str | None:
        try:
            return (self.pgdata / "PG_VERSION").read_text().strip()
        except OSError:
            return None

    # ------------------------------------------------------------------ lifecycle

    def _prepare_dirs(self, user: str | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user is None:
            self.data_dir.chmod(0o700)
            return
        pw = pwd.getpwnam(user)
        blocked = _not_searchable_by(self.data_dir, user)
        if blocked is not None:
            raise ClusterError(
                f"PostgreSQL must run as user {user!r} (it refuses root), and {user!r} cannot "
                f"reach {self.data_dir}: {blocked} is not searchable by it (mode "
                f"{stat.S_IMODE(blocked.stat().st_mode):04o}). Use a data directory outside "
                f"{blocked} (e.g. /var/lib/fleetwatch or /srv/fleetwatch), or grant access "
                f"with `setfacl -m u:{user}:x {blocked}`."
            )
        if self.data_dir.stat().st_uid != pw.pw_uid:
            os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        self.data_dir.chmod(0o700)

    def _initdb(self, user: str | None) -> None:
        """Create ``pgdata`` atomically: initdb into a scratch dir, then rename it into place."""
        scratch = self.data_dir / "pgdata.initdb"
        if scratch.exists():  # left over by an interrupted first start
            shutil.rmtree(scratch)
        bin_dir = pg_bin()
        # trust: the server listens on a 0700 unix socket only (see the module docstring).
        argv = [str(bin_dir / "initdb"), "-D", str(scratch), "-U", SUPERUSER, "-A", "trust",
                "-E", "UTF8", "--locale=C", "--no-instructions"]  # fmt: skip
        if not self.durable:
            argv.append("--no-sync")
        self._run(user, argv, "initdb")
        scratch.rename(self.pgdata)

    def _socket_dir_for_start(self, user: str | None) -> tuple[Path, bool]:
        """The socket directory for this start, and whether it is a temporary one."""
        run = self._in_tree_socket_dir()
        if self._socket_file_len(run) <= MAX_SOCKET_PATH:
            run.mkdir(mode=0o700, exist_ok=True)
            directory, temporary = run, False
        else:
            directory = Path(tempfile.mkdtemp(prefix=TMP_SOCKET_PREFIX, dir="/tmp"))
            temporary = True
            if self._socket_file_len(directory) > MAX_SOCKET_PATH:  # absurd TMPDIR-like setups
                raise ClusterError(f"no socket directory short enough for {self.data_dir}")
        if user is not None:
            pw = pwd.getpwnam(user)
            os.chown(directory, pw.pw_uid, pw.pw_gid)
        directory.chmod(0o700)
        return directory, temporary

    def start(self, timeout: float = 60.0) -> bool:
        """Start the server (creating the cluster on first use); wait until it accepts connections.

        Returns True if this call started it, False if a server was already running on this
        data directory (started by another process: it is then left running by :meth:`__exit__`).
        Leftovers of a crash are handled: PostgreSQL itself ignores lock files whose pid is dead,
        :meth:`_remove_stale_locks` removes those whose pid was reused by another program, and
        a start that meets a not-yet-reaped postmaster or its exiting backends is retried.
        """
        if self.running:
            return False
        user = self._user()
        self._prepare_dirs(user)
        if not self.initialized:
            self._initdb(user)
        socket_dir, temporary = self._socket_dir_for_start(user)
        self._remove_stale_locks(socket_dir)
        options = ["-k", str(socket_dir), "-p", str(self.port), "-c", "listen_addresses=",
                   "-c", "unix_socket_permissions=0700", *TUNING_OPTIONS]  # fmt: skip
        if not self.durable:
            options += NON_DURABLE_OPTIONS
        argv = [str(pg_bin(self._version()) / "pg_ctl"), "start", "-D", str(self.pgdata),
                "-l", str(self.log_file), "-w", "-t", str(int(timeout)),
                "-o", shlex.join(options)]  # fmt: skip
        retry_until = time.monotonic() + min(timeout, 15.0)
        while True:
            log_size = self.log_file.stat().st_size if self.log_file.exists() else 0
            try:
                self._run(user, argv, f"starting PostgreSQL in {self.pgdata}")
                break
            except ClusterError:
                if self.running:  # another process won the race to start it: use that one
                    self._cleanup_socket_dir(socket_dir, temporary)
                    return False
                logged = self._log_from(log_size)  # what this attempt logged
                transient = any(sign in logged for sign in _CRASH_LEFTOVERS)
                if not transient or time.monotonic() > retry_until:
                    self._cleanup_socket_dir(socket_dir, temporary)
                    raise
                time.sleep(0.2)
        self._started = True
        try:
            self._bootstrap()
        except BaseException:
            self.stop()
            raise
        return True

    def _remove_stale_locks(self, socket_dir: Path) -> None:
        """Delete lock files whose pid now belongs to a program that is not PostgreSQL.

        PostgreSQL ignores a lock file with a dead pid, but refuses to start when the pid was
        reused by a live process of the same user (common after a reboot). Lock files with a
        dead pid, or being written right now (no pid yet), are left to PostgreSQL.
        """
        for lock in (self.pgdata / "postmaster.pid", socket_dir / f".s.PGSQL.{self.port}.lock"):
            try:
                first = lock.read_text().split("\n", 1)[0].strip()
            except OSError:
                continue
            if first.isdigit() and _process_state(int(first)) == "other":
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()

    def _bootstrap(self) -> None:
        """Create database ``fleetwatch`` with PostGIS, once (idempotent if interrupted)."""
        marker = self.data_dir / ".bootstrapped"
        if marker.exists():
            return
        exists = self._psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")
        if not exists.strip():
            self._psql("postgres", f"CREATE DATABASE {DATABASE}")
        self._psql(DATABASE, "CREATE EXTENSION IF NOT EXISTS postgis")
        marker.write_text("database and PostGIS created\n")

    @staticmethod
    def _cleanup_socket_dir(directory: Path, temporary: bool) -> None:
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop the server if it runs (``fast``: roll back sessions, clean shutdown;
        ``immediate``: no shutdown checkpoint, crash recovery on next start; fine for tests)."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown shutdown mode {mode!r}")
        self._started = False
        if not self.running:
            return
        socket_dir = self.socket_dir
        bin_dir = pg_bin(self._version())
        self._run(
            self._user(),
            [
                str(bin_dir / "pg_ctl"),
                "stop",
                "-D",
                str(self.pgdata),
                "-m",
                mode,
                "-w",
                "-t",
                str(int(timeout)),
            ],
            f"stopping PostgreSQL in {self.pgdata}",
        )
        temporary = socket_dir != self._in_tree_socket_dir() and socket_dir.name.startswith(
            TMP_SOCKET_PREFIX
        )
        self._cleanup_socket_dir(socket_dir, temporary)

    def __enter__(self) -> EmbeddedCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._started:
            self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedCluster({str(self.data_dir)!r}, durable={self.durable})"


__all__ = ["DATABASE", "ClusterError", "EmbeddedCluster", "pg_bin"]
