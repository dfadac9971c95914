"""Expected alarms against the alerts table: every expected one present, nothing unexpected.

The simulator writes what it expects (:func:`expectations`, JSON); the check takes the alerts
of the fleet's vehicles created since the run started (as plain dicts: plate, type, start_time,
created_at, details) and matches each expectation to at most one alert of its vehicle and type
whose start lies in the expected window. An alert of a scripted kind that matches nothing is
unexpected; an expectation not yet due and unmatched is pending, not missing. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from loadtest.fleet.plan import BEIJING, Scenario, TimeLapse, VehicleSpec, iso

FATIGUE = ("fatigue_warning", "fatigue_escalation", "fatigue_continuous", "fatigue_daily")
#: The kinds the scenario scripts: any alert of these for a simulated vehicle must be expected.
SCRIPTED_KINDS = ("speeding", "forbidden_zone", "terminal_alarm", "offline", *FATIGUE)


def expectations(
    fleet: list[VehicleSpec],
    scenario: Scenario,
    clock: TimeLapse,
    run_started: float,
    offline_s: float,
) -> dict[str, Any]:
    """The document the simulator writes at start (``expected-alarms.json``)."""
    return {
        "run_started": iso(run_started),
        "window_start": iso(clock.start),
        "live_from": iso(clock.catch_up),
        "speed": clock.speed,
        "offline_s": offline_s,
        "vehicles": [
            {
                "plate": v.plate,
                "class": v.vehicle_class,
                "phone": v.phone,
                "protocol": v.version,
                "role": v.role,
            }
            for v in fleet
        ],
        "expected": scenario.expected,
        "skipped": scenario.skipped,
    }


@dataclass
class Outcome:
    present: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    unexpected: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def report(self) -> str:
        lines = []
        for want, got in self.present:
            lines.append(
                f"  present     {want['plate']:<10} {got['type']:<20} "
                f"start {_short(got['start_time'])}  ({want['why']})"
            )
        for want in self.missing:
            lines.append(
                f"  MISSING     {want['plate']:<10} {want['type']:<20} "
                f"start {_short(want['start_from'])}..{_short(want['start_to'])}  "
                f"({want['why']})"
            )
        for want in self.pending:
            lines.append(
                f"  pending     {want['plate']:<10} {want['type']:<20} "
                f"due {_short(want['due'])}  ({want['why']})"
            )
        for got in self.unexpected:
            lines.append(
                f"  UNEXPECTED  {got['plate']:<10} {got['type']:<20} "
                f"start {_short(got['start_time'])}  id {got.get('id')}"
            )
        verdict = "ok" if self.ok else "FAILED"
        head = (
            f"expected alarms: {len(self.present)} present, {len(self.missing)} missing, "
            f"{len(self.pending)} not due yet; {len(self.unexpected)} unexpected: {verdict}"
        )
        return "\n".join([head, *lines, "  (times: Beijing time)"] if lines else [head])


def _short(value: Any) -> str:
    """A time as Beijing time (what the dashboard shows)."""
    return _time(value).astimezone(BEIJING).strftime("%m-%d %H:%M:%S")


def _time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _matches(want: dict[str, Any], got: dict[str, Any], exact: bool) -> bool:
    if want["plate"] != got["plate"]:
        return False
    if want["type"] in FATIGUE:
        if got["type"] not in FATIGUE or (exact and got["type"] != want["type"]):
            return False
    elif got["type"] != want["type"]:
        return False
    if "name" in want and (got.get("details") or {}).get("name") != want["name"]:
        return False
    start = _time(got["start_time"])
    return _time(want["start_from"]) <= start <= _time(want["start_to"])


def compare(document: dict[str, Any], alerts: list[dict[str, Any]], now: datetime) -> Outcome:
    """Match ``alerts`` (of the fleet, created since the run started) to the expectations."""
    plates = {v["plate"] for v in document["vehicles"]}
    started = _time(document["run_started"])
    candidates = [
        a
        for a in alerts
        if a["plate"] in plates
        and a["type"] in SCRIPTED_KINDS
        and _time(a["created_at"]) >= started
        # a silence that began before this run (the demo was stopped): not this run's alarm
        and not (a["type"] == "offline" and _time(a["start_time"]) < started)
    ]
    out = Outcome()
    used: set[int] = set()
    for want in document["expected"]:
        due = _time(want["due"]) <= now
        found = None
        for exact in (True, False):  # the final stage first; an earlier stage while not due
            found = next(
                (i for i, a in enumerate(candidates) if i not in used and _matches(want, a, exact)),
                None,
            )
            if found is not None or due:
                break
        if found is not None and (due or candidates[found]["type"] == want["type"]):
            used.add(found)
            out.present.append((want, candidates[found]))
        elif found is not None:  # an earlier stage of an incident still under way
            used.add(found)
            out.pending.append(want)
        elif due:
            out.missing.append(want)
        else:
            out.pending.append(want)
    out.unexpected = [a for i, a in enumerate(candidates) if i not in used]
    return out
