"""What the command line tells a person when something is wrong, and serve's start-up banner.

No traceback reaches a user: an exception a command did not handle becomes one line saying what
went wrong and what to do, and a non-zero exit (``FLEETWATCH_DEBUG=1`` shows the traceback
too, for a bug report). :func:`describe` knows the failures a user can fix: a port in use, a
data directory that is a file or has no parent, a database that cannot be reached or refuses.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

#: Set to show the traceback under the one-line message (for bug reports).
DEBUG_ENV = "FLEETWATCH_DEBUG"


class UsageProblem(Exception):
    """Something the user can fix, already worded for them (printed as it is)."""


def version() -> str:
    """The installed distribution's version (the checkout's, when run from one)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("fleetwatch")
    except PackageNotFoundError:
        return "0+unknown"


def mask_url(url: str) -> str:
    """A database URL safe to print: its password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def prepare_data_dir(path: Path) -> None:
    """Create the data directory itself (never its parents: a mistyped path should not grow a
    tree) or refuse, in words, a path that cannot be one."""
    if path.exists() and not path.is_dir():
        raise UsageProblem(f"--data-dir {path} is a file, not a directory: choose another path")
    parent = path.absolute().parent
    if not path.exists() and not parent.is_dir():
        raise UsageProblem(
            f"--data-dir {path}: {parent} does not exist; create it first "
            f"(mkdir -p {parent}) or choose another path"
        )
    try:
        path.mkdir(exist_ok=True)
        probe = path / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise UsageProblem(f"--data-dir {path}: {exc.strerror or exc}") from None


def _listen_problem(exc: Any) -> str:
    port = getattr(exc, "port", "?")
    interface = getattr(exc, "interface", "") or "0.0.0.0"
    cause = getattr(exc, "socketError", None)
    code = getattr(cause, "errno", None)
    if code == errno.EADDRINUSE:
        return (
            f"port {port} on {interface} is already in use (another fleetwatch serve, or "
            f"another program: `ss -ltnp 'sport = :{port}'`); stop it or choose another port"
        )
    if code == errno.EACCES:
        return f"no permission to listen on port {port} (ports below 1024 need root)"
    if code == errno.EADDRNOTAVAIL:
        return f"{interface} is not an address of this machine: check the listen address"
    return f"cannot listen on {interface}:{port}: {getattr(cause, 'strerror', None) or cause}"


def describe(exc: BaseException, db_url: str | None = None) -> str:
    """One line for ``exc``: what went wrong and what to do about it."""
    from twisted.internet.error import CannotListenError

    where = f" at {mask_url(db_url)}" if db_url else ""
    if isinstance(exc, UsageProblem):
        return str(exc)
    if isinstance(exc, CannotListenError):
        return _listen_problem(exc)
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        asyncpg = None  # type: ignore[assignment]
    if asyncpg is not None:
        refused = asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
        if isinstance(exc, refused):
            return f"the database{where} refused the login ({exc}): check user and password"
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            return f"{exc} (database{where}): create it (createdb) or fix the name in --db"
        if isinstance(exc, asyncpg.PostgresError):
            return f"database error{where}: {type(exc).__name__}: {exc}"
    from store.cluster import ClusterError
    from store.migrations import MigrationError

    if isinstance(exc, ClusterError | MigrationError):
        return str(exc)
    unreachable = (errno.ENOENT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNREFUSED)
    if isinstance(exc, ConnectionError | TimeoutError) or (
        db_url and isinstance(exc, OSError) and exc.errno in unreachable
    ):
        return (
            f"cannot reach the database{where}: {exc}; check that PostgreSQL runs there and "
            "that host and port in --db are right"
        )
    if isinstance(exc, OSError) and exc.__class__.__name__ == "gaierror":
        return f"cannot resolve the database host{where}: {exc}; check the host in --db"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc}"
    if isinstance(exc, OSError):
        name = f"{exc.filename}: " if exc.filename else ""
        return f"{name}{exc.strerror or exc}"
    return (
        f"internal error: {type(exc).__name__}: {exc} (a bug: please report it with the "
        f"output of the same command run with {DEBUG_ENV}=1)"
    )


def fail(prog: str, exc: BaseException, db_url: str | None = None) -> int:
    """Print the one line for ``exc`` (and, with FLEETWATCH_DEBUG, the traceback); exit 1."""
    print(f"{prog}: error: {describe(exc, db_url)}", file=sys.stderr, flush=True)
    debug_traceback(exc)
    return 1


def debug_traceback(exc: BaseException) -> None:
    """The traceback on stderr, only when FLEETWATCH_DEBUG is set."""
    if os.environ.get(DEBUG_ENV):
        traceback.print_exception(exc, file=sys.stderr)


def announce(data_dir: Path, db_url: str, embedded: bool, ports: list[tuple[str, str]]) -> None:
    """Print the banner (in JSON mode: one event with the same facts as fields)."""
    from fleetwatch.logs import say

    fields: dict[str, Any] = {
        name.replace(" ", "").replace("/", "").lower(): a for name, a in ports
    }
    say(banner(data_dir, db_url, embedded, ports), brief=f"FleetWatch {version()} serving",
        data_dir=str(data_dir.absolute()), database=mask_url(db_url), pid=os.getpid(),
        stop="Ctrl-C or SIGTERM", **fields)  # fmt: skip


def banner(data_dir: Path, db_url: str, embedded: bool, ports: list[tuple[str, str]]) -> str:
    """What serve prints once it is up: where its data and database are, what it listens on,
    and how to stop it."""
    database = mask_url(db_url) + (f" (embedded, in {data_dir / 'postgres'})" if embedded else "")
    width = max(len(name) for name, _ in ports) if ports else 0
    lines = [
        f"FleetWatch {version()} serving (pid {os.getpid()})",
        f"  data dir   {data_dir.absolute()}",
        f"  database   {database}",
        *(f"  {name:<{width}}  {address}" for name, address in ports),
        "  stop with  Ctrl-C, or kill -TERM " + str(os.getpid()) + " (positions received are "
        "flushed and acknowledged first)",
    ]
    return "\n".join(lines)
