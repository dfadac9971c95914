"""``fleetwatch alerts list | show | ack | handle | close | audit`` and ``fleetwatch watchlist
add | remove | list``: the alarm desk from the command line.

The lifecycle rules are those of :mod:`alerts.lifecycle`; a refused step (closing a closed alert,
handling one nobody acknowledged) prints why and exits 1. Acknowledging here records it; the
terminal of a terminal-raised alarm is answered (0x8203) by the running server, not by this
command. Times print in UTC (ISO 8601 in ``--json``).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from alerts.lifecycle import HANDLING_ACTIONS, REVIEW_VERDICTS, SEVERITY_NAMES, STATUSES
from alerts.model import ALERT_TYPES
from fleetwatch import dbopts

if TYPE_CHECKING:
    from store.alerts import Alert, AlertStore, AuditEntry

PROG = "fleetwatch alerts"
WATCH_PROG = "fleetwatch watchlist"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``alerts`` and its actions to the ``fleetwatch`` command line."""
    parser = subparsers.add_parser(
        "alerts",
        help="list alerts and acknowledge, handle, close them (audited)",
        description="The alarm desk: list alerts, acknowledge them, record how they were "
        "handled, close them, and read each one's audit trail.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    lst = actions.add_parser("list", help="list alerts, newest first")
    lst.add_argument(
        "--status",
        action="append",
        choices=(*STATUSES, "active"),
        help="only alerts in this status (repeatable; active = not closed)",
    )
    lst.add_argument("--plate", help="only this vehicle's alerts (any plate colour)")
    lst.add_argument("--type", choices=ALERT_TYPES, metavar="TYPE", help="only this alert type")
    lst.add_argument(
        "--since", type=_time, metavar="TIME", help="episodes started at or after (ISO 8601, UTC)"
    )
    lst.add_argument("--limit", type=_positive, default=100, metavar="N", help="default 100")
    lst.add_argument("--json", action="store_true", help="print a JSON array")
    _command(lst, _list)

    show = actions.add_parser("show", help="one alert in full")
    show.add_argument("id", type=int, metavar="ID")
    show.add_argument("--json", action="store_true", help="print JSON")
    _command(show, _show)

    ack = actions.add_parser("ack", help="acknowledge an open alert (stops its escalation)")
    ack.add_argument("id", type=int, metavar="ID")
    ack.add_argument("--by", required=True, metavar="NAME", help="who acknowledges")
    ack.add_argument("--json", action="store_true", help="print the alert as JSON")
    _command(ack, _ack)

    handle = actions.add_parser(
        "handle",
        help="record how an acknowledged alert was handled (may be repeated)",
        description="Record what was done about an acknowledged alert. Repeat it for a second "
        "handling (a text first, then a phone call, then a report to the safety officer).",
    )
    handle.add_argument("id", type=int, metavar="ID")
    handle.add_argument("--by", required=True, metavar="NAME", help="who handled it")
    handle.add_argument("--action", required=True, choices=HANDLING_ACTIONS, help="what was done")
    handle.add_argument("--note", metavar="TEXT", help="details (required with --action note)")
    handle.add_argument("--json", action="store_true", help="print the alert as JSON")
    _command(handle, _handle)

    close = actions.add_parser(
        "close",
        help="close an alert (a note is required unless it was handled)",
        description="Close an alert. An alert that was never handled (false alarm, duplicate, "
        "resolved by itself) needs --note saying why; closing an open alert acknowledges it.",
    )
    close.add_argument("id", type=int, metavar="ID")
    close.add_argument("--by", required=True, metavar="NAME", help="who closes it")
    close.add_argument("--note", metavar="TEXT", help="why, or the outcome")
    close.add_argument("--json", action="store_true", help="print the alert as JSON")
    _command(close, _close)

    review = actions.add_parser(
        "review",
        help="a supervisor's second review of a handled or closed alert (once)",
        description="Record a supervisor's verdict on how an alert was handled (复核). The "
        "status does not change; an alert is reviewed once.",
    )
    review.add_argument("id", type=int, metavar="ID")
    review.add_argument("--by", required=True, metavar="NAME", help="who reviews it")
    review.add_argument("--verdict", required=True, choices=REVIEW_VERDICTS)
    review.add_argument("--note", required=True, metavar="TEXT", help="what was checked")
    review.add_argument("--json", action="store_true", help="print the alert as JSON")
    _command(review, _review)

    audit = actions.add_parser("audit", help="an alert's audit trail, oldest first")
    audit.add_argument("id", type=int, metavar="ID")
    audit.add_argument("--json", action="store_true", help="print a JSON array")
    _command(audit, _audit)


def register_watchlist(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``watchlist`` (缉查布控 plates) to the ``fleetwatch`` command line."""
    parser = subparsers.add_parser(
        "watchlist",
        help="plates to watch (an alert when they report or enter a watched area)",
        description="Plates on the watchlist raise an alert when their vehicle reports, and "
        "again when it enters a watched area. A running server picks up changes when it "
        "reloads the list.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    add = actions.add_parser("add", help="put a plate on the watchlist (or renew it)")
    add.add_argument("plate", metavar="PLATE")
    add.add_argument("--reason", required=True, help="why the plate is watched")
    add.add_argument("--by", metavar="NAME", help="who adds it (default: the login name)")
    _command(add, _watch_add, WATCH_PROG)

    remove = actions.add_parser("remove", help="take a plate off the watchlist")
    remove.add_argument("plate", metavar="PLATE")
    remove.add_argument("--by", metavar="NAME", help="who removes it (default: the login name)")
    _command(remove, _watch_remove, WATCH_PROG)

    lst = actions.add_parser("list", help="the watched plates")
    lst.add_argument("--all", action="store_true", help="include removed plates")
    lst.add_argument("--json", action="store_true", help="print a JSON array")
    _command(lst, _watch_list, WATCH_PROG)


def _command(parser: argparse.ArgumentParser, command: Any, prog: str = PROG) -> None:
    dbopts.add_database_options(parser)
    parser.set_defaults(handler=lambda args: dbopts.run(prog, command, args))


def _time(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: a whole number of at least 1")
    return number


def _user(args: argparse.Namespace) -> str:
    return args.by or getpass.getuser()


async def _with_store(args: argparse.Namespace, work: Any) -> Any:
    """Run ``work(store)``; the store's refusals become one error line (exit 1)."""
    from alerts.lifecycle import LifecycleError
    from store.alerts import AlertError, AlertStore

    async with dbopts.connect(args) as conn:
        try:
            return await work(AlertStore(conn))
        except (AlertError, LifecycleError) as exc:
            raise dbopts.CommandError(str(exc)) from None


def _dump(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment else "-"


def _details(details: dict[str, Any]) -> str:
    return json.dumps(details, ensure_ascii=False, separators=(",", ":")) if details else ""


def _row(alert: Alert) -> str:
    severity = SEVERITY_NAMES.get(alert.severity, str(alert.severity))
    flags = " late" if alert.late else ""
    if alert.escalation_level:
        flags += f" escalated:{alert.escalation_level}"
    return (
        f"{alert.id:>6}  {alert.status:<12} {severity:<8} {alert.type:<18} "
        f"{alert.plate or '-':<10} {_when(alert.start_time)}  {_when(alert.end_time)}"
        f"{flags}  {_details(alert.details)}"
    ).rstrip()


async def _list(args: argparse.Namespace) -> int:
    async def work(store: AlertStore) -> list[Alert]:
        return await store.list(
            status=args.status, plate=args.plate, type=args.type, since=args.since,
            limit=args.limit,
        )  # fmt: skip

    alerts = await _with_store(args, work)
    if args.json:
        _dump([a.to_json() for a in alerts])
        return 0
    if not alerts:
        print("no alerts", file=sys.stderr)
        return 0
    print(
        f"{'ID':>6}  {'STATUS':<12} {'SEVERITY':<8} {'TYPE':<18} {'PLATE':<10} "
        f"{'START (UTC)':<20}  {'END (UTC)':<20}  DETAILS"
    )
    for alert in alerts:
        print(_row(alert))
    return 0


async def _show(args: argparse.Namespace) -> int:
    from store.alerts import AlertNotFound

    async def work(store: AlertStore) -> Alert:
        alert = await store.get(args.id)
        if alert is None:
            raise AlertNotFound(f"no alert {args.id}")
        return alert

    _print_alert(await _with_store(args, work), args.json)
    return 0


def _print_alert(alert: Alert, as_json: bool) -> None:
    if as_json:
        _dump(alert.to_json())
        return
    for name, value in alert.to_json().items():
        if value is None or name == "severity_name":
            continue
        if name == "severity":
            value = f"{value} ({SEVERITY_NAMES.get(value, '?')})"
        elif name == "details":
            value = _details(value) or "{}"
        elif name == "timeline":
            value = "; ".join(f"{s['at']} {s['phase']} {s['type']}" for s in value) or "-"
        print(f"{name + ':':<18} {value}")


async def _ack(args: argparse.Namespace) -> int:
    alert = await _with_store(args, lambda store: store.acknowledge(args.id, args.by))
    _report(alert, "acknowledged", args.json)
    return 0


async def _handle(args: argparse.Namespace) -> int:
    alert = await _with_store(
        args, lambda store: store.handle(args.id, args.by, args.action, args.note)
    )
    _report(alert, f"handled ({args.action})", args.json)
    return 0


async def _close(args: argparse.Namespace) -> int:
    alert = await _with_store(args, lambda store: store.close(args.id, args.by, args.note))
    _report(
        alert, "closed" + (" (acknowledged too)" if alert.newly_acknowledged else ""), args.json
    )
    return 0


async def _review(args: argparse.Namespace) -> int:
    alert = await _with_store(
        args, lambda store: store.review(args.id, args.by, args.verdict, args.note)
    )
    _report(alert, f"reviewed ({args.verdict})", args.json)
    return 0


def _report(alert: Alert, done: str, as_json: bool) -> None:
    if as_json:
        _dump(alert.to_json())
        return
    print(f"alert {alert.id} {done}: {alert.type}, {alert.plate or '-'}, now {alert.status}")


async def _audit(args: argparse.Namespace) -> int:
    entries: list[AuditEntry] = await _with_store(args, lambda store: store.audit(args.id))
    if args.json:
        _dump([e.to_json() for e in entries])
        return 0
    for e in entries:
        change = f"{e.from_status or ''}->{e.to_status}" if e.to_status else ""
        print(f"{_when(e.at)}  {e.actor:<12} {e.action:<14} {change:<26} {_details(e.details)}")
    return 0


async def _watch_add(args: argparse.Namespace) -> int:
    entry = await _with_store(
        args, lambda store: store.watchlist_add(args.plate, args.reason, _user(args))
    )
    print(f"watching {entry.plate}: {entry.reason}")
    return 0


async def _watch_remove(args: argparse.Namespace) -> int:
    entry = await _with_store(args, lambda store: store.watchlist_remove(args.plate, _user(args)))
    print(f"no longer watching {entry.plate}")
    return 0


async def _watch_list(args: argparse.Namespace) -> int:
    entries = await _with_store(args, lambda store: store.watchlist_list(args.all))
    if args.json:
        _dump([e.to_json() for e in entries])
        return 0
    if not entries:
        print("the watchlist is empty", file=sys.stderr)
    for e in entries:
        state = "" if e.active else f"  (removed {_when(e.removed_at)} by {e.removed_by})"
        print(f"{e.plate:<12} {e.reason}  (added {_when(e.added_at)} by {e.added_by}){state}")
    return 0
