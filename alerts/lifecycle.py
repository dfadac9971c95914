"""The alarm lifecycle as a pure state machine: what a dispatcher may do to an alert, and when an
unacknowledged alert escalates. No database here (``store/alerts.py`` persists the outcome).

States and transitions::

    open ──acknowledge──▶ acknowledged ──handle──▶ handled ──close──▶ closed
      │                        │                     │  ▲
      │                        │                     └──┘ handle again ("second handling")
      └──close (note)──────────┴──close (note)───────────▶ closed

Why these and no others:

* ``acknowledge`` is its own step: it is the moment a person has seen the alarm (who, when),
  it stops escalation, and for a terminal alarm it is what answers the terminal (0x8203).
* ``handle`` needs an acknowledged alert, so "who saw it" is never skipped or guessed. It may
  be repeated on a handled alert: operators send a text, then phone, then report to the safety
  officer (the "second handling" of supervision dashboards); each one is audited.
* ``close`` normally follows handling. Closing an alert that was not handled is allowed for
  false alarms, duplicates and alarms that resolved themselves (a vehicle back online), but
  needs a note saying why, since the 3-year violation ledger must show how each one ended.
  Closing an *open* alert acknowledges it too (same person, same time): the terminal must still
  be answered, and nobody is left to acknowledge a closed alert.
* ``closed`` is final. A new episode of the same kind is a new alert.
* ``review`` is a supervisor's second look at how a handled or closed alert was handled
  (复核): a verdict (approved / rejected) and a note, once per alert. It does not change the
  status (closed stays final, a handled alert may still be closed), so it is a step on the
  side of the chart above rather than a state of its own; who may review (supervisors,
  admins) is the caller's rule.

The episode (``start_time``/``end_time``) is independent of this: an SOS bit can clear before
anybody looks, and a dispatcher can close an alert whose episode still runs (its end is still
recorded when it comes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from alerts.model import ALERT_TYPES, CRITICAL, HIGH, LOW, MEDIUM


class Status(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    HANDLED = "handled"
    CLOSED = "closed"


class Action(StrEnum):
    ACKNOWLEDGE = "acknowledge"
    HANDLE = "handle"
    CLOSE = "close"
    REVIEW = "review"


STATUSES = tuple(s.value for s in Status)
#: What a dispatcher did about an alarm (the regulations' handling forms): a text or TTS message
#: to the terminal (0x8300), a phone call to the driver, video/photo evidence captured, a report
#: to the company safety officer, or a written note only.
HANDLING_ACTIONS = ("text_sent", "phone_call", "evidence", "reported", "note")
#: A supervisor's verdict on how an alert was handled.
REVIEW_VERDICTS = ("approved", "rejected")
SEVERITY_NAMES = {CRITICAL: "critical", HIGH: "high", MEDIUM: "medium", LOW: "low"}

#: (from status, action) -> to status.
_TRANSITIONS: dict[tuple[Status, Action], Status] = {
    (Status.OPEN, Action.ACKNOWLEDGE): Status.ACKNOWLEDGED,
    (Status.ACKNOWLEDGED, Action.HANDLE): Status.HANDLED,
    (Status.HANDLED, Action.HANDLE): Status.HANDLED,
    (Status.HANDLED, Action.CLOSE): Status.CLOSED,
    (Status.ACKNOWLEDGED, Action.CLOSE): Status.CLOSED,
    (Status.OPEN, Action.CLOSE): Status.CLOSED,
    (Status.HANDLED, Action.REVIEW): Status.HANDLED,
    (Status.CLOSED, Action.REVIEW): Status.CLOSED,
}
_NEEDS_REASON = {Status.OPEN, Status.ACKNOWLEDGED}  # closing without handling: say why


class LifecycleError(ValueError):
    """A transition is not allowed or lacks what it needs (the message says what to do)."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One allowed lifecycle step, validated; what the store writes (row and audit)."""

    action: Action
    from_status: Status
    to_status: Status
    by: str
    at: datetime
    handling_action: str | None = None
    note: str | None = None
    verdict: str | None = None
    #: True when this step is the alert's acknowledgement (``acknowledge``, or ``close`` of an
    #: open alert): the moment to answer a terminal alarm with 0x8203.
    acknowledges: bool = False


def _who(alert_id: int | None) -> str:
    return f"alert {alert_id}" if alert_id is not None else "the alert"


def transition(
    status: str,
    action: str,
    *,
    by: str,
    at: datetime,
    handling_action: str | None = None,
    note: str | None = None,
    alert_id: int | None = None,
    verdict: str | None = None,
    reviewed: bool = False,
) -> Transition:
    """Check one step and return it; raises :class:`LifecycleError` naming what is wrong."""
    who = _who(alert_id)
    try:
        current = Status(status)
    except ValueError:
        raise LifecycleError(f"{who}: unknown status {status!r}") from None
    try:
        step = Action(action)
    except ValueError:
        raise LifecycleError(
            f"unknown action {action!r}: one of {', '.join(a.value for a in Action)}"
        ) from None
    by_n = (by or "").strip()
    if not by_n:
        raise LifecycleError(f"{step.value}: who does it is required (--by NAME)")
    if at.tzinfo is None or at.utcoffset() is None:
        raise LifecycleError(f"{step.value}: the time must be timezone-aware (UTC)")
    note_n = (note or "").strip() or None
    target = _TRANSITIONS.get((current, step))
    if step is Action.REVIEW:
        _check_review(who, current, target, verdict, note_n, reviewed)
    elif verdict is not None:
        raise LifecycleError(f"{step.value}: a verdict belongs to 'review'")
    if target is None:
        raise LifecycleError(f"{who} is {current.value}: {_refusal(current, step)}")
    if step is Action.HANDLE:
        if handling_action not in HANDLING_ACTIONS:
            raise LifecycleError(
                f"handle: action {handling_action!r}: one of {', '.join(HANDLING_ACTIONS)}"
            )
        if handling_action == "note" and note_n is None:
            raise LifecycleError("handle: action 'note' needs the note itself (--note TEXT)")
    elif handling_action is not None:
        raise LifecycleError(f"{step.value}: a handling action belongs to 'handle'")
    if step is Action.CLOSE and current in _NEEDS_REASON and note_n is None:
        raise LifecycleError(
            f"{who} is {current.value} and was never handled: closing it needs a note saying "
            "why (false alarm, duplicate, resolved by itself, ...)"
        )
    return Transition(
        action=step,
        from_status=current,
        to_status=target,
        by=by_n,
        at=at,
        handling_action=handling_action if step is Action.HANDLE else None,
        note=note_n,
        verdict=verdict if step is Action.REVIEW else None,
        acknowledges=current is Status.OPEN and step in (Action.ACKNOWLEDGE, Action.CLOSE),
    )


def _check_review(
    who: str, current: Status, target: Status | None, verdict: str | None, note: str | None,
    reviewed: bool,
) -> None:  # fmt: skip
    if target is None:
        raise LifecycleError(
            f"{who} is {current.value}: only a handled or closed alert can be reviewed"
        )
    if reviewed:
        raise LifecycleError(f"{who} was reviewed already (a review is recorded once)")
    if verdict not in REVIEW_VERDICTS:
        raise LifecycleError(f"review: verdict {verdict!r}: one of {', '.join(REVIEW_VERDICTS)}")
    if note is None:
        raise LifecycleError("review: a note is required (what was checked, what was wrong)")


def _refusal(current: Status, step: Action) -> str:
    if current is Status.CLOSED:
        return f"it cannot be {_past(step)} (closed alerts are final)"
    if step is Action.ACKNOWLEDGE:
        return "it was acknowledged already"
    if step is Action.HANDLE and current is Status.OPEN:
        return "acknowledge it before recording how it was handled"
    return f"it cannot be {_past(step)}"  # pragma: no cover - every other pair is allowed


def _past(step: Action) -> str:
    return {
        Action.ACKNOWLEDGE: "acknowledged", Action.HANDLE: "handled", Action.CLOSE: "closed",
        Action.REVIEW: "reviewed",
    }[step]  # fmt: skip


def allowed_actions(status: str) -> tuple[Action, ...]:
    """The actions a dispatcher may take on an alert in ``status`` (for buttons and help)."""
    current = Status(status)
    return tuple(a for a in Action if (current, a) in _TRANSITIONS)


# ---------------------------------------------------------------------- escalation

#: Longest time an alert may stay unacknowledged, by severity (None: never escalates).
DEFAULT_LIMITS: dict[int, timedelta | None] = {
    CRITICAL: timedelta(minutes=1),
    HIGH: timedelta(minutes=5),
    MEDIUM: timedelta(minutes=15),
    LOW: None,
}
DEFAULT_MAX_LEVEL = 3


def parse_severity(value: int | str) -> int:
    """1-4 or a name (critical, high, medium, low)."""
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        number = int(value)
        if number in SEVERITY_NAMES:
            return number
    else:
        names = {v: k for k, v in SEVERITY_NAMES.items()}
        if value.strip().lower() in names:
            return names[value.strip().lower()]
    raise ValueError(f"severity {value!r}: 1-4 or one of {', '.join(SEVERITY_NAMES.values())}")


@dataclass(frozen=True, slots=True)
class EscalationPolicy:
    """When an unacknowledged alert escalates, and how far.

    The clock starts when the platform raised the alert (``created_at``), not at the episode's
    start: an alarm found in a blind-area batch hours late has not been waiting that long for a
    dispatcher. Level ``n`` is due ``n`` limits after that (an SOS left alone: level 1 after
    1 minute, 2 after 2, 3 after 3), up to ``max_level``. ``by_type`` overrides a severity's
    limit for one alert type: keys ``(type, severity)`` or ``(type, None)`` for every severity
    of that type; the value None means that alert never escalates.
    """

    by_severity: Mapping[int, timedelta | None] = field(
        default_factory=lambda: dict(DEFAULT_LIMITS)
    )
    by_type: Mapping[tuple[str, int | None], timedelta | None] = field(default_factory=dict)
    max_level: int = DEFAULT_MAX_LEVEL

    def __post_init__(self) -> None:
        if self.max_level < 1:
            raise ValueError(f"max_level={self.max_level}: at least 1")
        for limit in (*self.by_severity.values(), *self.by_type.values()):
            if limit is not None and limit <= timedelta(0):
                raise ValueError(f"escalation limit {limit}: must be positive (or None)")

    def limit(self, alert_type: str, severity: int) -> timedelta | None:
        """How long an alert of this type and severity may stay unacknowledged."""
        for key in ((alert_type, severity), (alert_type, None)):
            if key in self.by_type:
                return self.by_type[key]
        return self.by_severity.get(severity)

    def level_due(self, alert_type: str, severity: int, raised_at: datetime, now: datetime) -> int:
        """The escalation level an alert still open at ``now`` should have reached (0: none)."""
        limit = self.limit(alert_type, severity)
        if limit is None or now < raised_at + limit:
            return 0
        return min(self.max_level, int((now - raised_at) // limit))

    def next_due(
        self, alert_type: str, severity: int, raised_at: datetime, level: int
    ) -> datetime | None:
        """When an alert at ``level`` escalates next (None: never)."""
        limit = self.limit(alert_type, severity)
        if limit is None or level >= self.max_level:
            return None
        return raised_at + limit * (level + 1)

    @property
    def shortest(self) -> timedelta | None:
        """The shortest limit of any (type, severity): nothing can be due before it."""
        limits = [t for t in (*self.by_severity.values(), *self.by_type.values()) if t]
        return min(limits) if limits else None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EscalationPolicy:
        """Build from configuration (seconds; null = never), defaults for what is left out::

        {"severity": {"critical": 60, "high": 300, "medium": 900, "low": null},
         "types": {"terminal_alarm": {"high": 120}, "geofence_enter": null},
         "max_level": 3}
        """
        unknown = set(config) - {"severity", "types", "max_level"}
        if unknown:
            raise ValueError(f"escalation: unknown key(s) {', '.join(sorted(unknown))}")
        by_severity = dict(DEFAULT_LIMITS)
        for name, seconds in (config.get("severity") or {}).items():
            by_severity[parse_severity(name)] = _seconds(seconds)
        by_type: dict[tuple[str, int | None], timedelta | None] = {}
        for alert_type, value in (config.get("types") or {}).items():
            if alert_type not in ALERT_TYPES:
                raise ValueError(f"escalation: unknown alert type {alert_type!r}")
            if isinstance(value, Mapping):
                for name, seconds in value.items():
                    by_type[(alert_type, parse_severity(name))] = _seconds(seconds)
            else:
                by_type[(alert_type, None)] = _seconds(value)
        return cls(by_severity, by_type, int(config.get("max_level", DEFAULT_MAX_LEVEL)))


def _seconds(value: float | None) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"escalation limit {value!r}: a positive number of seconds or null")
    return timedelta(seconds=value)
