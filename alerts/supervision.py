"""Supervision wired to the live server: the rules engine fed by ingest, alerts persisted in
batches, automatic texts to drivers, alarm confirmations on acknowledgement, terminal-side
enforcement.

:class:`Supervision` is the ingest service's observer (``ingest.jt808_server.IngestObserver``).
What runs where:

* **On the ingest path** (cheap, no I/O): each durable position goes through
  ``RulesEngine.feed`` with the vehicle's cached :class:`~alerts.model.VehicleInfo`; the events
  it returns are appended to a list. A vehicle seen for the first time (or re-authenticated) has
  its info loaded in the background; its positions wait, in order, until it is there.
* **Every ``flush_interval`` (100 ms) while events wait**: one ``AlertStore.apply_results``
  round trip for all of them (the writer's collect-and-flush pattern, never a query per
  position); then the automatic actions of the alerts that batch *inserted* (a retried batch
  reports ``ignored``/``updated``, so a text is never sent twice).
* **Every ``tick_interval`` (2 s)**: ``RulesEngine.tick`` (offline, no fix, time-based
  escalations). **Every ``escalate_interval`` (5 s)**, worker 0 only:
  ``AlertStore.escalate_due``.
* **Every ``confirm_interval`` (1 s)**: terminal alarms acknowledged anywhere (this server's
  :meth:`Supervision.acknowledge` or ``fleetwatch alerts ack`` in another process) and not yet
  confirmed are confirmed to their terminal (:class:`~alerts.commands.ConfirmAlarm`, 0x8203 in
  JT/T 808) if it is connected to this process; the push row (``terminal_pushes``) is what marks
  them confirmed. A terminal that is offline is confirmed when it next connects (an attempt
  that found it offline does not count).
* **Every ``fence_interval`` (10 s)**: a fingerprint of the geofences table (count and newest
  change); when it differs the fences are reloaded and the index rebuilt. Polling, not
  LISTEN/NOTIFY: one cheap query, no dedicated connection, and the same code works when the
  fences are edited by the CLI, SQL or another server.
* **On authentication**: the enforcement template (parameters and areas) is pushed if its
  content differs from what the terminal last accepted (``terminal_pushes``), so a reconnect
  does not resend it; only to provisioned vehicles (not to the unassigned pool of the
  ``open`` policy, unless configured). :meth:`Supervision.push_enforcement` pushes on
  demand.

Every command to a terminal (texts, confirmations, pushes) goes through the command gateway
(:mod:`alerts.gateway`), in platform terms (:mod:`alerts.commands`); this module knows no
protocol and no connection.

Rule state is in memory, per worker: with ``serve --workers N`` a vehicle's rules run in the
worker that holds its connection. A terminal reconnecting to another worker starts there with
empty rule state (a running fatigue count or episode is lost; the store closes nothing by
itself) - acceptable for now, and the architecture's plan (a durable log between ingest and
rules, state rebuilt from the store) is what fixes it. The watchlist is reloaded with the
fences.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from alerts.actions import Actions, PlannedText
from alerts.commands import (
    CONFIRMABLE_ALARMS,
    OFFLINE,
    Command,
    CommandFailed,
    ConfirmAlarm,
    command_to_json,
)
from alerts.enforcement import EnforcementConfig, plan_pushes
from alerts.engine import RulesEngine
from alerts.lifecycle import EscalationPolicy
from alerts.model import TERMINAL_ALARM, AlertEvent, VehicleInfo
from alerts.settings import RuleSettings
from geo.index import FenceIndex
from geo.position import Position
from store import geofences, pushes
from store.alerts import Alert, AlertStore
from store.vehicles import vehicle_facts

if TYPE_CHECKING:
    import asyncpg

    from alerts.gateway import CommandGateway

log = logging.getLogger(__name__)

#: Events held while the database is away; beyond this the oldest are dropped (and counted).
MAX_PENDING_EVENTS = 200_000


class Terminal(Protocol):
    """The vehicle of a connected terminal, as ingest knows it."""

    @property
    def id(self) -> int: ...

    @property
    def plate(self) -> str | None: ...

    @property
    def provisioned(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Source:
    """A vehicle known only by id (the NMEA path)."""

    id: int
    plate: str | None = None
    provisioned: bool = True


class Metrics(Protocol):
    """Where the counters are published (``ingest.metrics.Metrics``)."""

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None: ...


@dataclass
class SupervisionStats:
    """Counters, also served on /metrics as ``fleetwatch_supervision_*``."""

    positions: int = 0
    events_stored: int = 0
    events_dropped: int = 0
    flushes: int = 0
    flush_failures: int = 0
    texts: int = 0
    confirmations: int = 0
    enforcement_pushes: int = 0
    fence_reloads: int = 0


class Supervision:
    """Rules, alerts and terminal-side actions for one ingest service (one worker)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        gateway: CommandGateway,
        config: Mapping[str, Any] | None = None,
        *,
        metrics: Metrics | None = None,
        worker_index: int = 0,
        flush_interval: float = 0.1,
        tick_interval: float = 2.0,
        escalate_interval: float = 5.0,
        confirm_interval: float = 1.0,
        fence_interval: float = 10.0,
        command_timeout: float = 30.0,
    ) -> None:
        config = dict(config or {})
        unknown = set(config) - {"rules", "actions", "escalation", "enforcement"}
        if unknown:
            raise ValueError(f"supervision config: unknown key(s) {', '.join(sorted(unknown))}")
        self.pool = pool
        self.gateway = gateway
        self.worker_index = worker_index
        self.flush_interval = flush_interval
        self.tick_interval = tick_interval
        self.escalate_interval = escalate_interval
        self.confirm_interval = confirm_interval
        self.fence_interval = fence_interval
        self.command_timeout = command_timeout
        self.settings = RuleSettings.from_dict(config.get("rules") or {})
        self.actions = Actions(config.get("actions"))
        self.escalation = EscalationPolicy.from_config(config.get("escalation") or {})
        self.enforcement = EnforcementConfig.from_config(config.get("enforcement") or {})
        self.index = FenceIndex([])
        self.engine = RulesEngine(self.index, self.settings)
        self.alerts = AlertStore(pool)
        self.stats = SupervisionStats()
        self.vehicles: dict[int, VehicleInfo] = {}
        self._held: dict[int, list[Position]] = {}  # vehicle id -> positions waiting for info
        self._events: list[AlertEvent] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flushing = False
        self._confirming: set[int] = set()  # alert ids being confirmed by this process
        self._pushing: set[int] = set()  # vehicle ids whose enforcement push is running
        self._fence_print: Any = None
        self._watch_print: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        if metrics is not None:
            self._publish(metrics)

    def _publish(self, metrics: Metrics) -> None:
        stats = self.stats
        for name in SupervisionStats.__dataclass_fields__:
            metrics.gauge(
                f"fleetwatch_supervision_{name}", f"supervision: {name.replace('_', ' ')}",
                lambda name=name: getattr(stats, name),  # type: ignore[misc]
            )  # fmt: skip
        metrics.gauge(
            "fleetwatch_supervision_events_waiting",
            "alert events not stored yet",
            lambda: len(self._events),
        )

    # ------------------------------------------------------------------ start / stop

    async def start(self) -> None:
        """Load fences and watchlist, then start the periodic jobs (inside the running loop)."""
        self._loop = asyncio.get_running_loop()
        try:
            await self.reload_fences(force=True)
        except Exception:  # e.g. worker 0 has not migrated yet: the periodic job retries
            log.exception("loading geofences failed; retrying every %s s", self.fence_interval)
        jobs: list[tuple[float, Callable[[], Awaitable[Any]]]] = [
            (self.tick_interval, self._tick),
            (self.confirm_interval, self.confirm_acknowledged),
            (self.fence_interval, self.reload_fences),
        ]
        if self.worker_index == 0:
            jobs.append((self.escalate_interval, self.escalate))
        for interval, job in jobs:
            self._loops.append(self._loop.create_task(self._every(interval, job)))

    async def stop(self) -> None:
        """Stop the jobs, wait briefly for commands in flight, store the last events."""
        self._closed = True
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._tasks:  # commands waiting for answers: a short grace, then give up on them
            _, late = await asyncio.wait(set(self._tasks), timeout=2.0)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        while self._flushing:
            await asyncio.sleep(0.01)
        if self._events:
            await self.flush()

    async def _every(self, interval: float, job: Callable[[], Awaitable[Any]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("supervision job %s failed", getattr(job, "__name__", job))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("supervision task failed", exc_info=task.exception())

    # ------------------------------------------------------------------ ingest observer

    def authenticated(self, vehicle: Terminal) -> None:
        """Refresh the vehicle's info (its class or overrides may have changed), then push
        the enforcement template if it changed since the terminal last accepted it."""
        self._spawn(self._authenticated(vehicle))

    async def _authenticated(self, vehicle: Terminal) -> None:
        await self._load_vehicle(vehicle)
        config = self.enforcement
        if config.on_authentication and (vehicle.provisioned or config.unprovisioned):
            await self.push_enforcement(vehicle.id)

    def positions(self, vehicle: Terminal, positions: list[Position]) -> None:
        """Durable positions of one terminal message, in the connection's order."""
        held = self._held.get(vehicle.id)
        if held is not None:  # its info is being loaded: keep the order
            held.extend(positions)
            return
        info = self.vehicles.get(vehicle.id)
        if info is None:
            self._held[vehicle.id] = list(positions)
            self._spawn(self._load_vehicle(vehicle))
            return
        self._feed(info, positions)

    def judging(
        self, submit: Callable[[list[Position]], asyncio.Future[str]]
    ) -> Callable[[list[Position]], asyncio.Future[str]]:
        """``submit`` (the writer's) whose positions also reach the rules once durable: the
        NMEA path, where one call carries one vehicle's fixes and nothing is acknowledged."""

        def judged(positions: list[Position]) -> asyncio.Future[str]:
            future = submit(positions)
            future.add_done_callback(lambda done: self._durable(done, positions))
            return future

        return judged

    def _durable(self, done: asyncio.Future[str], positions: list[Position]) -> None:
        if done.cancelled() or done.exception() is not None or not positions:
            return  # not stored: the rules must not judge what the track will not show
        vid = positions[0].vehicle_id
        try:
            self.positions(_Source(vid), positions)
        except Exception:
            log.exception("supervision of NMEA positions of vehicle %s failed", vid)

    def _feed(self, info: VehicleInfo, positions: list[Position]) -> None:
        if len(positions) > 1 and positions[0].batch:
            positions = sorted(positions, key=_fix_time)  # a blind-area batch, in fix order
        feed = self.engine.feed
        events = self._events
        for position in positions:
            found = feed(position, info)
            if found:
                events.extend(found)
        self.stats.positions += len(positions)
        if events and self._flush_timer is None and not self._flushing:
            self._schedule_flush(self.flush_interval)

    def driver(self, vehicle: Terminal, driver: str | None, at: datetime) -> None:
        """A driver signed in (``driver`` names them) or out (None) at ``at`` (UTC)."""
        self._add(self.engine.driver(vehicle.id, driver, at))

    def logout(self, vehicle: Terminal) -> None:
        """The terminal said goodbye (logged out), so its silence is no offline alarm."""
        self._add(self.engine.logout(vehicle.id, datetime.now(UTC)))

    def _add(self, events: list[AlertEvent]) -> None:
        if events:
            self._events.extend(events)
            if self._flush_timer is None and not self._flushing:
                self._schedule_flush(self.flush_interval)

    # ------------------------------------------------------------------ vehicles

    async def _load_vehicle(self, vehicle: Terminal) -> None:
        """Fetch the vehicle's rule facts, then feed what waited for them (in order)."""
        try:
            row = await vehicle_facts(self.pool, vehicle.id)
            info = vehicle_info(row) if row is not None else VehicleInfo(vehicle.id, vehicle.plate)
        except Exception:
            log.exception("loading vehicle %s failed; judging it with default settings", vehicle.id)
            info = self.vehicles.get(vehicle.id) or VehicleInfo(vehicle.id, vehicle.plate)
        self.vehicles[vehicle.id] = info
        held = self._held.pop(vehicle.id, None)
        if held:
            self._feed(info, held)

    async def vehicle(self, vehicle_id: int) -> VehicleInfo | None:
        """The vehicle's rule facts: cached, else from the database (None: no such vehicle)."""
        info = self.vehicles.get(vehicle_id)
        if info is None:
            row = await vehicle_facts(self.pool, vehicle_id)
            info = vehicle_info(row) if row is not None else None
        return info

    # ------------------------------------------------------------------ events

    def _schedule_flush(self, delay: float) -> None:
        assert self._loop is not None
        self._flush_timer = self._loop.call_later(delay, self._flush_due)

    def _flush_due(self) -> None:
        self._flush_timer = None
        self._spawn(self.flush())

    async def flush(self) -> int:
        """Store the waiting events in one round trip, then act on the alerts they opened.
        On a database failure the events wait for the next try (bounded)."""
        if self._flushing or not self._events:
            return 0
        self._flushing = True
        events, self._events = self._events, []
        failed = False
        try:
            applied = await self.alerts.apply_results(events)
        except Exception as exc:
            failed = True
            self.stats.flush_failures += 1
            log.warning("storing %d alert events failed (%s); retrying", len(events), exc)
            events.extend(self._events)  # keep the order: the failed ones first
            self._events = events[-MAX_PENDING_EVENTS:]
            self.stats.events_dropped += len(events) - len(self._events)
            return 0
        else:
            self.stats.flushes += 1
            self.stats.events_stored += len(events)
            for event, result in zip(events, applied, strict=True):
                if result.outcome == "inserted":
                    log.info(
                        "alert %s opened: %s of vehicle %s (severity %s%s), key %s",
                        result.alert_id, event.type, event.vehicle_id, event.severity,
                        ", late" if event.late else "", event.key,
                    )  # fmt: skip
                    self._act(event, result.alert_id)
            return len(events)
        finally:
            self._flushing = False
            if self._events and self._flush_timer is None and not self._closed:
                self._schedule_flush(1.0 if failed else self.flush_interval)

    async def _tick(self) -> None:
        self._add(self.engine.tick(datetime.now(UTC)))

    async def escalate(self) -> list[Alert]:
        escalated = await self.alerts.escalate_due(datetime.now(UTC), self.escalation)
        for alert in escalated:
            log.warning(
                "alert %s (%s, %s) not acknowledged: escalated to level %s",
                alert.id, alert.type, alert.plate, alert.escalation_level,
            )  # fmt: skip
        return escalated

    # ------------------------------------------------------------------ automatic actions

    def _act(self, event: AlertEvent, alert_id: int) -> None:
        info = self.vehicles.get(event.vehicle_id)
        planned = self.actions.plan(event, info.plate if info else None)
        if planned is not None:
            self._spawn(self.send_text(planned, alert_id))

    async def send_text(self, planned: PlannedText, alert_id: int) -> str:
        """Send an automatic text and record the outcome (push row and the alert's audit)."""
        vehicle_id = planned.event.vehicle_id
        text = planned.command
        result, serial, push_id = await self.push(
            vehicle_id, f"text:{planned.event.type}", text, alert_id=alert_id
        )
        self.stats.texts += 1
        await self.alerts.record(
            alert_id, "auto_text",
            {"text": planned.text, "tts": text.tts, "display": text.display,
             "urgent": text.urgent, "result": result, "serial": serial, "push_id": push_id},
        )  # fmt: skip
        return result

    # ------------------------------------------------------------------ acknowledgement

    async def acknowledge(self, alert_id: int, by: str) -> tuple[Alert, str | None]:
        """Acknowledge an alert; a terminal alarm is confirmed to its terminal.
        Returns the alert and the confirmation's result (None: nothing to confirm)."""
        self._confirming.add(alert_id)
        try:
            alert = await self.alerts.acknowledge(alert_id, by)
            result = None
            if alert.newly_acknowledged and _confirmable(alert.type, alert.details):
                result = await self.confirm(alert.id, alert.vehicle_id, alert.details)
            return alert, result
        finally:
            self._confirming.discard(alert_id)

    async def confirm_acknowledged(self) -> int:
        """Start confirming acknowledged terminal alarms not yet confirmed whose terminal is
        connected to this worker (acknowledged here or by another process); how many."""
        started = 0
        for alarm in await pushes.unconfirmed_alarms(self.pool, CONFIRMABLE_ALARMS):
            if alarm.alert_id in self._confirming or not self.gateway.holds(alarm.vehicle_id):
                continue
            self._confirming.add(alarm.alert_id)
            self._spawn(self._confirm_once(alarm))
            started += 1
        return started

    async def _confirm_once(self, alarm: pushes.Unconfirmed) -> None:
        try:
            await self.confirm(alarm.alert_id, alarm.vehicle_id, alarm.details)
        finally:
            self._confirming.discard(alarm.alert_id)

    async def confirm(self, alert_id: int, vehicle_id: int, details: Mapping[str, Any]) -> str:
        """Confirm the alarm to its terminal (by name, with the serial of the report that
        raised it) and audit the terminal's answer."""
        command = ConfirmAlarm(alarm=str(details["name"]), report_serial=_alarm_serial(details))
        result, serial, push_id = await self.push(
            vehicle_id, f"alarm_confirmation:{alert_id}", command, alert_id=alert_id
        )
        self.stats.confirmations += 1
        await self.alerts.record(
            alert_id, "terminal_confirm",
            {"alarm": command.alarm, "bit": details.get("bit"),
             "alarm_serial": command.report_serial, "result": result, "serial": serial,
             "push_id": push_id},
        )  # fmt: skip
        return result

    # ------------------------------------------------------------------ enforcement

    async def push_enforcement(
        self, vehicle_id: int, *, force: bool = False
    ) -> list[tuple[str, str]]:
        """Push the vehicle's parameter template and areas where they differ from what the
        terminal last accepted (``force``: all of them); returns (item, result) per push."""
        if vehicle_id in self._pushing:
            return []
        self._pushing.add(vehicle_id)
        try:
            info = await self.vehicle(vehicle_id)
            if info is None or not self.gateway.holds(vehicle_id):
                return []
            accepted = {} if force else await pushes.accepted_hashes(self.pool, vehicle_id)
            plan = plan_pushes(
                info, self.settings, self.index.fences.values(), accepted, self.enforcement
            )
            for fence_id, why in plan.skipped:
                log.info("geofence %s not pushed to vehicle %s: %s", fence_id, vehicle_id, why)
            results = []
            for item in plan.items:
                result, _, _ = await self.push(
                    vehicle_id, item.item, item.command, content=item.content
                )
                self.stats.enforcement_pushes += 1
                results.append((item.item, result))
                if result == OFFLINE:
                    break
            return results
        finally:
            self._pushing.discard(vehicle_id)

    # ------------------------------------------------------------------ sending

    async def push(
        self,
        vehicle_id: int,
        item: str,
        command: Command,
        *,
        alert_id: int | None = None,
        content: Any = None,
    ) -> tuple[str, int | None, int]:
        """Record, send (through the gateway) and await one command: (result, serial, push
        row id); the result is the terminal's answer or why there was none."""
        if content is None:
            content = command_to_json(command)
        push_id = await pushes.begin(
            self.pool, vehicle_id, command.KIND, item, content, alert_id=alert_id
        )
        try:
            reply = await self.gateway.send(vehicle_id, command, timeout=self.command_timeout)
        except CommandFailed as failed:
            result, serial, answered = failed.reason, None, None
        else:
            result, serial, answered = reply.result, reply.serial, reply.answered_at
        await pushes.finish(self.pool, push_id, result, serial=serial, answered_at=answered)
        return result, serial, push_id

    # ------------------------------------------------------------------ fences

    async def reload_fences(self, force: bool = False) -> bool:
        """Rebuild the fence index if the geofences changed, and reload the watchlist if it
        did; True if anything was reloaded."""
        reloaded = False
        fingerprint = await geofences.fingerprint(self.pool)
        if force or fingerprint != self._fence_print:
            self.index.rebuild(await geofences.load(self.pool))
            self._fence_print = fingerprint
            self.stats.fence_reloads += 1
            reloaded = True
        watch_print = await self.alerts.watchlist_fingerprint()
        if force or watch_print != self._watch_print:
            self.engine.set_watchlist(await self.alerts.watchlist_reasons())
            self._watch_print = watch_print
            reloaded = True
        return reloaded


def _fix_time(position: Position) -> datetime:
    return position.fix_time


def _confirmable(alert_type: str, details: Mapping[str, Any]) -> bool:
    return alert_type == TERMINAL_ALARM and details.get("name") in CONFIRMABLE_ALARMS


def _alarm_serial(details: Mapping[str, Any]) -> int:
    """The serial of the report that raised the alarm (0 confirms every alarm of the type)."""
    for key in ("serial", "position_serial", "alarm_serial"):
        value = details.get(key)
        if isinstance(value, int):
            return value
    return 0


def vehicle_info(row: Mapping[str, Any]) -> VehicleInfo:
    """A ``vehicles`` row (id, plate, class, company_id, overrides as JSON text) as rules see it."""
    overrides = row["overrides"]
    if isinstance(overrides, str):
        overrides = json.loads(overrides)
    overrides = dict(overrides or {})
    return VehicleInfo(
        id=row["id"],
        plate=row["plate"],
        vehicle_class=row["class"],
        company_id=row["company_id"],
        long_distance=bool(overrides.get("long_distance", False)),
        overrides=overrides,
    )


def load_config(path: str | None) -> dict[str, Any]:
    """The ``--rules-config`` JSON file: {"rules", "actions", "escalation", "enforcement"}."""
    if path is None:
        return {}
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a JSON object expected")
    return config


__all__ = [
    "MAX_PENDING_EVENTS",
    "Supervision",
    "SupervisionStats",
    "load_config",
    "vehicle_info",
]
