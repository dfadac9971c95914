"""``serve``'s log: Twisted's events and the standard library's records in one stream (stderr).

``--log-format text`` (default) is Twisted's classic line, for people. ``--log-format json`` is
one flat JSON object per line, for log shippers (Loki, Elasticsearch, journald's JSON input):
``ts`` (ISO 8601, UTC, milliseconds, ``Z``), ``level`` (debug, info, warning, error,
critical), ``logger`` (the module or class that logged), ``msg`` (the formatted message), then
the event's own fields (``phone``, ``peer``, ``vehicle_id``, ...) flat beside them, and for an
exception ``error`` plus ``traceback`` as one string. Twisted's raw event JSON
(``jsonFileLogObserver``) is none of that: nested ``log_level`` objects, format strings with
the values beside them, no message.

The standard library's loggers (store, supervision) are bridged into Twisted's publisher, so
both formats carry them and their INFO records are not lost.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogLevel,
    formatEvent,
    globalLogBeginner,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python.failure import Failure

#: Twisted's level names → the conventional ones.
LEVEL_NAMES = {
    LogLevel.debug: "debug", LogLevel.info: "info", LogLevel.warn: "warning",
    LogLevel.error: "error", LogLevel.critical: "critical",
}  # fmt: skip
_FROM_STDLIB = (
    (logging.CRITICAL, LogLevel.critical), (logging.ERROR, LogLevel.error),
    (logging.WARNING, LogLevel.warn), (logging.INFO, LogLevel.info),
)  # fmt: skip
#: Keys of Twisted's legacy events that are bookkeeping, not fields.
_LEGACY_KEYS = frozenset(("format", "message", "isError", "system", "time", "why", "failure"))
CORE_KEYS = ("ts", "level", "logger", "msg")


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


def event_as_json(event: dict[str, Any]) -> str:
    """One Twisted log event → one flat JSON object (no newline)."""
    when = datetime.fromtimestamp(event.get("log_time") or 0.0, UTC)
    level = event.get("log_level", LogLevel.info)
    logger = event.get("log_namespace") or "-"
    if logger == "log_legacy":
        system = event.get("system") or event.get("log_system")
        logger = system if system and system != "-" else "twisted"
    out: dict[str, Any] = {
        "ts": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": LEVEL_NAMES.get(level, getattr(level, "name", str(level))),
        "logger": logger,
        "msg": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_KEYS or key in out:
            continue
        out[key] = _plain(value)
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        out["error"] = f"{type(failure.value).__name__}: {failure.getErrorMessage()}"
        out["traceback"] = failure.getTraceback()
    return json.dumps(out, ensure_ascii=False, default=str)


def json_observer(stream: IO[str]) -> ILogObserver:
    return FileLogObserver(stream, lambda event: event_as_json(event) + "\n")


class _ToTwisted(logging.Handler):
    """Standard library records into Twisted's publisher (one stream, one format)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = next((tw for lvl, tw in _FROM_STDLIB if record.levelno >= lvl), LogLevel.debug)
            event: dict[str, Any] = {
                "log_time": record.created, "log_level": level, "log_namespace": record.name,
                "log_format": "{log_text}", "log_text": record.getMessage(),
            }  # fmt: skip
            if record.exc_info and record.exc_info[1] is not None:
                _, value, tb = record.exc_info
                event["log_failure"] = Failure(value, type(value), tb)
            globalLogPublisher(event)
        except Exception:  # a logging failure must never take the caller down
            self.handleError(record)


_json = {"on": False}


def start_logging(log_format: str, stream: IO[str] | None = None) -> None:
    """Send every log event to ``stream`` (stderr) in ``log_format`` ("text" or "json")."""
    stream = stream or sys.stderr
    _json["on"] = log_format == "json"
    observer = json_observer(stream) if _json["on"] else textFileLogObserver(stream)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _ToTwisted)]
    root.addHandler(_ToTwisted())
    root.setLevel(logging.INFO)


def say(text: str, *, level: LogLevel = LogLevel.info, brief: str = "", **fields: Any) -> None:
    """A message for the operator (banner, start-up failure): plain lines on stderr, or in
    JSON mode a log event like any other, ``brief`` as its message if given (so a log shipper
    never meets a line it cannot read)."""
    if _json["on"]:
        globalLogPublisher({
            "log_time": datetime.now(UTC).timestamp(), "log_level": level,
            "log_namespace": "fleetwatch", "log_format": "{log_text}",
            "log_text": brief or text, **fields,
        })  # fmt: skip
    else:
        print(text, file=sys.stderr, flush=True)
