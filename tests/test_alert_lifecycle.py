"""The alarm lifecycle state machine and the escalation policy (pure, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from alerts.lifecycle import (
    DEFAULT_LIMITS,
    HANDLING_ACTIONS,
    Action,
    EscalationPolicy,
    LifecycleError,
    Status,
    Transition,
    allowed_actions,
    parse_severity,
    transition,
)
from alerts.model import CRITICAL, HIGH, LOW, MEDIUM, SPEEDING, TERMINAL_ALARM

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)

#: Every allowed (from, action) -> to; everything else must be refused.
LEGAL = {
    ("open", "acknowledge"): "acknowledged",
    ("open", "close"): "closed",
    ("acknowledged", "handle"): "handled",
    ("acknowledged", "close"): "closed",
    ("handled", "handle"): "handled",
    ("handled", "close"): "closed",
    ("handled", "review"): "handled",
    ("closed", "review"): "closed",
}


def step(status: str, action: str, **kw: Any) -> Transition:
    args: dict[str, Any] = {"by": "王调度", "at": T0, "note": "checked on camera"}
    if action == "handle":
        args["handling_action"] = "phone_call"
    if action == "review":
        args["verdict"] = "approved"
    args.update(kw)
    return transition(status, action, **args)


@pytest.mark.parametrize(("status", "action"), sorted(LEGAL))
def test_every_legal_transition(status: str, action: str) -> None:
    t = step(status, action)
    assert (t.from_status, t.action, t.to_status) == (status, action, LEGAL[(status, action)])
    assert (t.by, t.at, t.note) == ("王调度", T0, "checked on camera")
    assert t.acknowledges is (status == "open")  # ack, or close of an open alert
    assert t.handling_action == ("phone_call" if action == "handle" else None)
    assert t.verdict == ("approved" if action == "review" else None)


ILLEGAL = sorted({(s.value, a.value) for s in Status for a in Action} - set(LEGAL))


@pytest.mark.parametrize(("status", "action"), ILLEGAL)
def test_every_illegal_transition_is_refused(status: str, action: str) -> None:
    with pytest.raises(LifecycleError) as info:
        step(status, action, alert_id=42)
    message = str(info.value)
    assert message.startswith(f"alert 42 is {status}: ")
    expected = {
        "closed": "(closed alerts are final)",
        "acknowledged": "it was acknowledged already",
        "handled": "it was acknowledged already",
        "open": "acknowledge it before recording how it was handled",
    }[status]
    if action == "review":
        expected = "only a handled or closed alert can be reviewed"
    assert expected in message


def test_illegal_pairs_are_exactly_the_complement() -> None:
    assert ILLEGAL == [
        ("acknowledged", "acknowledge"), ("acknowledged", "review"), ("closed", "acknowledge"),
        ("closed", "close"), ("closed", "handle"), ("handled", "acknowledge"),
        ("open", "handle"), ("open", "review"),
    ]  # fmt: skip
    assert allowed_actions("open") == (Action.ACKNOWLEDGE, Action.CLOSE)
    assert allowed_actions("acknowledged") == (Action.HANDLE, Action.CLOSE)
    assert allowed_actions("handled") == (Action.HANDLE, Action.CLOSE, Action.REVIEW)
    assert allowed_actions("closed") == (Action.REVIEW,)


def test_review_needs_a_verdict_and_a_note_and_happens_once() -> None:
    for bad in (None, "", "ok", "APPROVED"):
        with pytest.raises(LifecycleError, match=r"review: verdict .*: one of approved, rejected"):
            step("closed", "review", verdict=bad)
    for note in (None, "", "  "):
        with pytest.raises(LifecycleError, match="review: a note is required"):
            step("handled", "review", note=note)
    with pytest.raises(LifecycleError, match="alert 9 was reviewed already"):
        step("closed", "review", reviewed=True, alert_id=9)
    with pytest.raises(LifecycleError, match="a verdict belongs to 'review'"):
        step("handled", "close", verdict="approved")
    rejected = step("closed", "review", verdict="rejected", note=" no text sent ")
    assert (rejected.verdict, rejected.note, rejected.acknowledges) == (
        "rejected", "no text sent", False,
    )  # fmt: skip


def test_who_and_when_are_required() -> None:
    for by in ("", "   "):
        with pytest.raises(LifecycleError, match=r"acknowledge: who does it is required"):
            step("open", "acknowledge", by=by)
    with pytest.raises(LifecycleError, match="timezone-aware"):
        step("open", "acknowledge", at=datetime(2025, 3, 1, 8, 0))
    assert step("open", "acknowledge", by="  Li  ").by == "Li"


def test_closing_unhandled_needs_a_reason() -> None:
    for status in ("open", "acknowledged"):
        for note in (None, "", "  "):
            with pytest.raises(LifecycleError, match="closing it needs a note saying why"):
                step(status, "close", note=note, alert_id=7)
    closed = step("handled", "close", note=None)
    assert closed.note is None
    assert step("open", "close", note=" false alarm ").note == "false alarm"


def test_handling_needs_a_known_action_and_a_note_for_note() -> None:
    for action in HANDLING_ACTIONS:
        assert step("acknowledged", "handle", handling_action=action).handling_action == action
    for bad in (None, "", "sms", "PHONE_CALL"):
        with pytest.raises(LifecycleError, match=r"handle: action .*: one of text_sent, phone"):
            step("acknowledged", "handle", handling_action=bad)
    with pytest.raises(LifecycleError, match="action 'note' needs the note itself"):
        step("acknowledged", "handle", handling_action="note", note=None)
    with pytest.raises(LifecycleError, match="a handling action belongs to 'handle'"):
        step("open", "acknowledge", handling_action="phone_call")


def test_unknown_status_and_action() -> None:
    with pytest.raises(LifecycleError, match="unknown status 'pending'"):
        step("pending", "acknowledge")
    with pytest.raises(LifecycleError, match="unknown action 'reopen'"):
        step("closed", "reopen")


# ---------------------------------------------------------------------- escalation


def test_default_limits_by_severity() -> None:
    policy = EscalationPolicy()
    assert policy.limit(SPEEDING, CRITICAL) == timedelta(minutes=1)
    assert policy.limit(SPEEDING, HIGH) == timedelta(minutes=5)
    assert policy.limit(SPEEDING, MEDIUM) == timedelta(minutes=15)
    assert policy.limit(SPEEDING, LOW) is None
    assert policy.shortest == timedelta(minutes=1)
    assert DEFAULT_LIMITS[LOW] is None


def test_levels_repeat_every_limit_up_to_the_maximum() -> None:
    policy = EscalationPolicy()
    due = [
        policy.level_due(TERMINAL_ALARM, CRITICAL, T0, T0 + timedelta(seconds=s))
        for s in (0, 59, 60, 119, 120, 180, 3600)
    ]
    assert due == [0, 0, 1, 1, 2, 3, 3]
    assert policy.next_due(TERMINAL_ALARM, CRITICAL, T0, 0) == T0 + timedelta(minutes=1)
    assert policy.next_due(TERMINAL_ALARM, CRITICAL, T0, 2) == T0 + timedelta(minutes=3)
    assert policy.next_due(TERMINAL_ALARM, CRITICAL, T0, 3) is None
    assert policy.level_due(SPEEDING, LOW, T0, T0 + timedelta(days=5)) == 0
    assert policy.next_due(SPEEDING, LOW, T0, 0) is None


def test_per_type_overrides() -> None:
    policy = EscalationPolicy(
        by_type={
            (TERMINAL_ALARM, HIGH): timedelta(seconds=30),
            (SPEEDING, None): None,  # speeding never escalates, whatever its severity
        },
        max_level=5,
    )
    assert policy.limit(TERMINAL_ALARM, HIGH) == timedelta(seconds=30)
    assert policy.limit(TERMINAL_ALARM, MEDIUM) == timedelta(minutes=15)
    assert policy.limit(SPEEDING, CRITICAL) is None
    assert policy.level_due(TERMINAL_ALARM, HIGH, T0, T0 + timedelta(seconds=150)) == 5
    assert policy.shortest == timedelta(seconds=30)


def test_policy_from_config() -> None:
    policy = EscalationPolicy.from_config(
        {
            "severity": {"critical": 30, "4": 3600},
            "types": {"terminal_alarm": {"high": 120}, "geofence_enter": None},
            "max_level": 2,
        }
    )
    assert policy.limit(SPEEDING, CRITICAL) == timedelta(seconds=30)
    assert policy.limit(SPEEDING, HIGH) == timedelta(minutes=5)  # default kept
    assert policy.limit(SPEEDING, LOW) == timedelta(hours=1)
    assert policy.limit(TERMINAL_ALARM, HIGH) == timedelta(minutes=2)
    assert policy.limit("geofence_enter", CRITICAL) is None
    assert policy.max_level == 2
    assert EscalationPolicy.from_config({}) == EscalationPolicy()
    for bad, message in (
        ({"severity": {"urgent": 1}}, "severity 'urgent'"),
        ({"severity": {"critical": 0}}, "positive number of seconds"),
        ({"severity": {"critical": "60"}}, "positive number of seconds"),
        ({"types": {"speeding_fast": 1}}, "unknown alert type 'speeding_fast'"),
        ({"max_level": 0}, "max_level=0"),
        ({"levels": 3}, "unknown key"),
    ):
        with pytest.raises(ValueError, match=message):
            EscalationPolicy.from_config(bad)


def test_parse_severity() -> None:
    assert [parse_severity(v) for v in (1, "2", "Medium", " low ")] == [1, 2, 3, 4]
    for bad in (0, 5, "5", "severe"):
        with pytest.raises(ValueError):
            parse_severity(bad)
