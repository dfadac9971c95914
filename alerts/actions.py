"""Automatic actions: what the platform tells the driver by itself when an alert opens.

The monitoring guidelines script the first reminder (a fatigue pre-warning gets "you have
driven 3.5 hours, plan a rest", a fatigue alarm "stop and rest now"), so the platform sends it
at once as a text read aloud (TTS) instead of waiting for a dispatcher. Which alert types get
a text, its template and its flags are configuration (:data:`DEFAULT_ACTIONS`, merged
with a dict); a ``None`` entry switches a type off.

Rules that matter here:

* never for late events (found in a blind-area batch, behind the newest fix, or from a fix
  that was already old when it arrived), and never when the event's fix time is more than
  ``recent_s`` (120 s, the ``actions.recent_s`` setting) behind the wall clock when the text
  would go out: the driver would be told about something long over. Old data still makes
  stored alerts; only the words to the driver are held back. (A terminal whose clock lags
  gets no automatic texts for that reason: per fix, a wrong clock and old data look alike.);
* only when an alert opens or its incident reaches a new stage (a fatigue warning becoming
  the alarm: an ``update`` of another type that the store reports as ``staged``), never on a
  close; the caller plans only for those;
* a cooldown per vehicle and type (by fix time), so a driver hovering around a speed limit
  is not read the same sentence every minute.

Sans-I/O: :meth:`Actions.plan` turns an event into a :class:`PlannedText` (or None); sending it
and recording the outcome is :mod:`alerts.supervision`'s job.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from alerts.commands import Text
from alerts.model import (
    ALERT_TYPES,
    FATIGUE_CONTINUOUS,
    FATIGUE_DAILY,
    FATIGUE_ESCALATION,
    FATIGUE_WARNING,
    FATIGUE_WEEKLY,
    FORBIDDEN_ZONE,
    NIGHT_DRIVING,
    SPEEDING,
    AlertEvent,
)

#: Alert type -> action. ``text``: a ``str.format`` template over the event's details plus
#: ``hours`` (the driving time the alert is about, in hours: 3.5 for the default
#: pre-warning), ``limit`` (km/h), ``speed`` (km/h), ``plate`` and ``fence`` (a fence's
#: name); ``fallback``: the text when a placeholder has no value; ``tts``/``display``/
#: ``urgent``: how the terminal presents it; ``cooldown_s``: no second text of this type to the same
#: vehicle within that many seconds (fix time).
DEFAULT_ACTIONS: dict[str, dict[str, Any] | None] = {
    FATIGUE_WARNING: {
        "text": "您已连续驾驶{hours}小时，即将疲劳驾驶，请提前安排行程，注意休息",
        "fallback": "您即将疲劳驾驶，请提前安排行程，注意休息",
    },
    FATIGUE_CONTINUOUS: {"text": "您已疲劳驾驶，请立即在安全地带停车休息", "urgent": True},
    FATIGUE_ESCALATION: {"text": "您已疲劳驾驶，请立即在安全地带停车休息", "urgent": True},
    FATIGUE_DAILY: {
        "text": "您24小时内累计驾驶已超过{hours}小时，请在安全地带停车休息",
        "fallback": "您24小时内累计驾驶时间已超限，请在安全地带停车休息",
        "urgent": True,
    },
    FATIGUE_WEEKLY: {
        "text": "您7日内累计驾驶已超过{hours}小时，请合理安排休息",
        "fallback": "您7日内累计驾驶时间已超限，请合理安排休息",
    },
    NIGHT_DRIVING: {"text": "凌晨2时至5时客车禁止行驶，请在安全地带停车休息", "urgent": True},
    SPEEDING: {
        "text": "您已超速，限速{limit}公里每小时，请减速慢行",
        "fallback": "您已超速，请减速慢行",
        "cooldown_s": 300,
    },
    FORBIDDEN_ZONE: {
        "text": "您已进入禁行区域{fence}，请立即驶离",
        "fallback": "您已进入禁行区域，请立即驶离",
    },
}

_KEYS = {"text", "fallback", "tts", "display", "urgent", "cooldown_s"}
#: Details keys that may hold the driving time, in seconds (the first present wins).
_DRIVING_KEYS = ("threshold_s", "limit_s", "driving_s")
_LIMIT_KEYS = ("limit_kmh", "limit", "speed_limit_kmh")
_SPEED_KEYS = ("max_speed_kmh", "speed_kmh", "speed")
_FENCE_KEYS = ("fence_name", "fence", "name")


@dataclass(frozen=True, slots=True)
class TextAction:
    """One configured action (see :data:`DEFAULT_ACTIONS`)."""

    type: str
    text: str
    fallback: str | None = None
    tts: bool = True
    display: bool = True
    urgent: bool = False
    cooldown_s: float = 0.0


@dataclass(frozen=True, slots=True)
class PlannedText:
    """A text to send for one event."""

    action: TextAction
    text: str
    event: AlertEvent

    @property
    def command(self) -> Text:
        action = self.action
        return Text(self.text, tts=action.tts, display=action.display, urgent=action.urgent)


def parse_actions(config: Mapping[str, Any] | None = None) -> dict[str, TextAction]:
    """:data:`DEFAULT_ACTIONS` with ``config`` applied: per type, ``None`` switches it off, a
    dict is merged into the default entry (or starts a new one, which then needs ``text``)."""
    merged: dict[str, dict[str, Any] | None] = {
        k: dict(v) if v is not None else None for k, v in DEFAULT_ACTIONS.items()
    }
    for alert_type, entry in (config or {}).items():
        if alert_type not in ALERT_TYPES:
            raise ValueError(f"actions: unknown alert type {alert_type!r}")
        if entry is None:
            merged[alert_type] = None
            continue
        if not isinstance(entry, Mapping):
            raise ValueError(f"actions.{alert_type}: a dict or null, not {entry!r}")
        unknown = set(entry) - _KEYS
        if unknown:
            raise ValueError(f"actions.{alert_type}: unknown key(s) {', '.join(sorted(unknown))}")
        merged[alert_type] = {**(merged.get(alert_type) or {}), **entry}
    actions = {}
    for alert_type, entry in merged.items():
        if entry is None:
            continue
        if not entry.get("text"):
            raise ValueError(f"actions.{alert_type}: needs a text")
        actions[alert_type] = TextAction(
            type=alert_type,
            text=str(entry["text"]),
            fallback=entry.get("fallback"),
            tts=bool(entry.get("tts", True)),
            display=bool(entry.get("display", True)),
            urgent=bool(entry.get("urgent", False)),
            cooldown_s=float(entry.get("cooldown_s", 0)),
        )
        if not (actions[alert_type].tts or actions[alert_type].display):
            raise ValueError(f"actions.{alert_type}: a text must be shown, read aloud, or both")
        _check_template(alert_type, actions[alert_type].text)
    return actions


def _check_template(alert_type: str, text: str) -> None:
    try:
        list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"actions.{alert_type}: bad template {text!r}: {exc}") from None


def _number(value: float) -> str:
    """3.5 -> "3.5", 4.0 -> "4", 80.0 -> "80" (how a person would say it)."""
    return f"{round(value, 1):g}"


def _first(details: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = details.get(key)
        if value is not None:
            return value
    return None


def template_values(event: AlertEvent, plate: str | None = None) -> dict[str, Any]:
    """What a template may name: the event's details plus the friendly derived values."""
    details = event.details
    values: dict[str, Any] = {k: v for k, v in details.items() if v is not None}
    driving = _first(details, _DRIVING_KEYS)
    if isinstance(driving, int | float) and "hours" not in values:
        values["hours"] = _number(driving / 3600)
    limit = _first(details, _LIMIT_KEYS)
    if isinstance(limit, int | float):
        values["limit"] = _number(limit)
    speed = _first(details, _SPEED_KEYS)
    if isinstance(speed, int | float):
        values["speed"] = _number(speed)
    fence = _first(details, _FENCE_KEYS)
    if isinstance(fence, str):
        values["fence"] = fence
    if plate:
        values["plate"] = plate
    return values


#: Default for how old (fix time vs wall clock) an alert may be and still get a text.
RECENT_S = 120.0


class Actions:
    """Decides the automatic texts; remembers per vehicle and type when it last sent one.

    ``config`` is per alert type (see :func:`parse_actions`) plus ``recent_s``."""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        config = dict(config or {})
        recent = config.pop("recent_s", RECENT_S)
        if isinstance(recent, bool) or not isinstance(recent, int | float) or recent < 0:
            raise ValueError(f"actions.recent_s: a number of seconds >= 0, not {recent!r}")
        self.recent = timedelta(seconds=recent)
        self.by_type = parse_actions(config)
        self._last: dict[tuple[int, str], datetime] = {}

    def plan(
        self, event: AlertEvent, plate: str | None = None, now: datetime | None = None
    ) -> PlannedText | None:
        """The text to send for this event at wall-clock time ``now``, or None (no action,
        late or too old, not an opening, or within the cooldown). Planning a text starts its
        cooldown."""
        if event.phase == "close" or event.late:
            return None
        if now is not None and now - (event.found or event.start) > self.recent:
            return None
        action = self.by_type.get(event.type)
        if action is None:
            return None
        key = (event.vehicle_id, event.type)
        if action.cooldown_s > 0:
            last = self._last.get(key)
            if last is not None and event.start - last < timedelta(seconds=action.cooldown_s):
                return None
            self._last[key] = event.start
        try:
            text = action.text.format_map(template_values(event, plate))
        except (KeyError, IndexError, ValueError, AttributeError):
            if action.fallback is None:
                return None
            text = action.fallback
        return PlannedText(action, text, event)


__all__ = [
    "DEFAULT_ACTIONS",
    "Actions",
    "PlannedText",
    "TextAction",
    "parse_actions",
    "template_values",
]
