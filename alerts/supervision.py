"""Supervision wired to the live server: the rules engine fed by ingest, alerts persisted in
batches, automatic texts to drivers, alarm confirmations on acknowledgement, terminal-side
enforcement.

:class:`Supervision` is the ingest service's observer (``ingest.jt808_server.IngestObserver``).
What runs where:

* **From the durable feed** (``PositionWriter.subscribe``, one loop turn after the acks; cheap,
  no I/O): each durable position, JT/T 808 or NMEA, goes through ``RulesEngine.feed`` with the
  vehicle's cached :class:`~alerts.model.VehicleInfo`; the events it returns are appended to a
  list. A vehicle this worker has not judged yet (first sight, a terminal that moved here) is
  claimed in the background, in batches: its info loaded, its rule state restored and the
  track after the snapshot replayed (alerts/snapshots.py); its positions wait, in order.
* **Every ``save_interval`` (5 s)**: the rule state of the vehicles that changed is saved;
  **every ``poll_interval`` (1 s)**: vehicles another worker claimed are forgotten here. A
  vehicle whose connection ends here is saved at once. Worker 0 restores at start-up every
  snapshot an earlier run left.
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
* **When the geofences change** (the table's trigger NOTIFYs ``fleetwatch_geofences``, heard
  on the command gateway's listening connection, so no connection of its own) and **every
  ``fence_interval`` (10 s)** (for a notification lost while that connection was
  reconnecting): the table's version is read; when it differs the fences are reloaded, the
  index rebuilt, and the areas re-pushed to the terminals connected here that had their
  enforcement pushed (only those whose areas changed get a message: the push compares
  with what each terminal last accepted). An edit in the dashboard, the CLI or SQL reaches
  the rules in tens of milliseconds, with no restart.
* **On authentication**: the enforcement template (parameters and areas) is pushed if its
  content differs from what the terminal last accepted (``terminal_pushes``), so a reconnect
  does not resend it; only to provisioned vehicles (not to the unassigned pool of the
  ``open`` policy, unless configured). :meth:`Supervision.push_enforcement` pushes on
  demand.

Every command to a terminal (texts, confirmations, pushes) goes through the command gateway
(:mod:`alerts.gateway`), in platform terms (:mod:`alerts.commands`); this module knows no
protocol and no connection.

Rule state lives in the worker that judges the vehicle and survives a crash, a restart and a
move to another worker (:mod:`alerts.snapshots`). The watchlist is reloaded with the fences.
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
from alerts.model import OFFLINE as OFFLINE_ALERT  # its type and its key
from alerts.model import TERMINAL_ALARM, AlertEvent, VehicleInfo
from alerts.settings import RuleSettings
from alerts.snapshots import StateKeeper
from geo.index import FenceIndex
from geo.position import Position
from store import geofences, pushes
from store.alerts import Alert, AlertStore
from store.vehicles import vehicle_facts, vehicles_facts

if TYPE_CHECKING:
    import asyncpg

    from alerts.gateway import CommandGateway

log = logging.getLogger(__name__)

#: What :meth:`Supervision.push` says of an automatic text the alert already had.
DUPLICATE = "duplicate"
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
        save_interval: float = 5.0,
        poll_interval: float = 1.0,
        generation: str | None = None,
        restore_on_start: bool | None = None,
        revive: Callable[[Position], Position] | None = None,
    ) -> None:
        config = dict(config or {})
        unknown = set(config) - {"rules", "actions", "escalation", "enforcement", "state"}
        if unknown:
            raise ValueError(f"supervision config: unknown key(s) {', '.join(sorted(unknown))}")
        state = dict(config.get("state") or {})  # {"save_interval": s, "poll_interval": s}
        if set(state) - {"save_interval", "poll_interval"}:
            raise ValueError("supervision config: state takes save_interval and poll_interval")
        save_interval = float(state.get("save_interval", save_interval))
        poll_interval = float(state.get("poll_interval", poll_interval))
        if save_interval <= 0 or poll_interval <= 0:
            raise ValueError("supervision config: state intervals must be positive seconds")
        self.pool = pool
        self.gateway = gateway
        self.worker_index = worker_index
        self.flush_interval = flush_interval
        self.tick_interval = tick_interval
        self.escalate_interval = escalate_interval
        self.confirm_interval = confirm_interval
        self.fence_interval = fence_interval
        self.command_timeout = command_timeout
        self.save_interval = save_interval
        self.poll_interval = poll_interval
        #: Restore what an earlier run left (default: worker 0 does, for every worker).
        self.restore_on_start = worker_index == 0 if restore_on_start is None else restore_on_start
        self.settings = RuleSettings.from_dict(config.get("rules") or {})
        self.actions = Actions(config.get("actions"))
        self.escalation = EscalationPolicy.from_config(config.get("escalation") or {})
        self.enforcement = EnforcementConfig.from_config(config.get("enforcement") or {})
        self.index = FenceIndex([])
        self.engine = RulesEngine(self.index, self.settings)
        self.keeper = StateKeeper(
            pool, self.engine, generation=generation, worker=worker_index, on_lost=self._lost,
            revive=revive,
        )  # fmt: skip
        self.alerts = AlertStore(pool)
        self.stats = SupervisionStats()
        self.vehicles: dict[int, VehicleInfo] = {}
        self._held: dict[int, list[Position]] = {}  # vehicle id -> positions waiting for info
        self._to_attach: set[int] = set()  # first seen here, not claimed yet
        self._released: set[int] = set()  # connections ended here: save them now
        self._attaching = False
        self._events: list[AlertEvent] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flushing = False
        self._confirming: set[int] = set()  # alert ids being confirmed by this process
        self._pushing: set[int] = set()  # vehicle ids whose enforcement push is running
        self._push_again: set[int] = set()  # fences changed while their push was running
        self._enforced: set[int] = set()  # connected here, enforcement pushed at authentication
        self._fence_lock = asyncio.Lock()  # one reload at a time (notifications and the poll)
        self._fence_news = False  # a notification's reload is scheduled
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
        keeper = self.keeper.stats
        for name in type(keeper).__dataclass_fields__:
            metrics.gauge(
                f"fleetwatch_rule_state_{name}", f"rule state: {name.replace('_', ' ')}",
                lambda name=name: getattr(keeper, name),  # type: ignore[misc]
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
        await self.gateway.listen(geofences.CHANNEL, self._fences_announced)
        await self.keeper.start()
        if self.restore_on_start:
            await self._attach(set(), await self.keeper.claim_left())
        jobs: list[tuple[float, Callable[[], Awaitable[Any]]]] = [
            (self.tick_interval, self._tick),
            (self.save_interval, self.keeper.save),
            (self.poll_interval, self.keeper.poll),
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
        await self.keeper.save()

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
        """Claim a vehicle first seen here (its positions wait until its state is restored),
        or refresh its info (its class or overrides may have changed); then push the
        enforcement template if it changed since the terminal last accepted it."""
        vid = vehicle.id
        if vid not in self.vehicles and vid not in self._held:
            self._held[vid] = []
            self._attach_soon(vid)
        self._spawn(self._authenticated(vehicle))

    async def _authenticated(self, vehicle: Terminal) -> None:
        if vehicle.id in self.vehicles:
            # Back on this worker: save its state, which is refused if another worker took
            # the vehicle over meanwhile (then it is forgotten here, and its next position
            # restores it from that worker's snapshot and the positions since).
            await self.keeper.save([vehicle.id])
        if vehicle.id in self.vehicles:
            await self._load_vehicle(vehicle)
        config = self.enforcement
        if config.on_authentication and (vehicle.provisioned or config.unprovisioned):
            self._enforced.add(vehicle.id)
            await self.push_enforcement(vehicle.id)

    def released(self, vehicle: Terminal) -> None:
        """The vehicle's connection here ended: save its state now, for the worker its
        terminal may reconnect to (that worker also replays what this one judged since)."""
        self._enforced.discard(vehicle.id)
        if vehicle.id in self.vehicles and not self._closed:  # stop() saves everything
            if not self._released:  # a network blip drops thousands at once: one save
                assert self._loop is not None
                self._loop.call_soon(self._save_released)
            self._released.add(vehicle.id)

    def _save_released(self) -> None:
        released, self._released = self._released, set()
        self._spawn(self.keeper.save(released))

    def durable(self, positions: list[Position]) -> None:
        """The writer's durable feed: a batch of any vehicles, each in fix-time order."""
        vehicles = self.vehicles
        held = self._held
        feed = self.engine.feed
        events = self._events
        for position in positions:
            vid = position.vehicle_id
            waiting = held.get(vid)
            if waiting is not None:  # being claimed: keep the order
                waiting.append(position)
                continue
            info = vehicles.get(vid)
            if info is None:
                held[vid] = [position]
                self._attach_soon(vid)
                continue
            found = feed(position, info)
            if found:
                events.extend(found)
        self.stats.positions += len(positions)
        if events and self._flush_timer is None and not self._flushing:
            self._schedule_flush(self.flush_interval)

    def _feed(self, info: VehicleInfo, positions: list[Position]) -> None:
        feed = self.engine.feed
        events = self._events
        for position in positions:
            found = feed(position, info)
            if found:
                events.extend(found)
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

    def _attach_soon(self, vehicle_id: int) -> None:
        self._to_attach.add(vehicle_id)
        if not self._attaching:
            self._attaching = True
            self._spawn(self._attach_waiting())

    async def _attach_waiting(self) -> None:
        """Claim the vehicles first seen here, in batches (a fleet reconnecting after a
        restart is a few statements, not one round trip per vehicle)."""
        try:
            while self._to_attach:
                batch, self._to_attach = self._to_attach, set()
                await self._attach(batch)
        finally:
            self._attaching = False

    async def _attach(
        self, vehicle_ids: set[int], starts: dict[int, datetime | None] | None = None
    ) -> None:
        """Claim ``vehicle_ids`` (or take ``starts``: vehicles claimed already), load their
        info, restore their state, replay their track after it, then feed what waited."""
        facts: dict[int, VehicleInfo] = {}
        replay: dict[int, list[Position]] = {}
        offline: dict[int, datetime] = {}
        try:
            if starts is None:  # seen here now: reporting, or just authenticated
                starts = await self.keeper.claim(vehicle_ids)
                offline = await self.alerts.running(vehicle_ids, OFFLINE_ALERT)
            vehicle_ids = vehicle_ids | set(starts)
            for row in await vehicles_facts(self.pool, list(vehicle_ids)):
                facts[row["id"]] = vehicle_info(row)
            replay = await self.keeper.replay(starts)
        except Exception:
            log.exception(
                "restoring the rule state of %d vehicles failed; judging them afresh",
                len(vehicle_ids),
            )
        for vid in vehicle_ids:
            info = facts.get(vid) or self.vehicles.get(vid) or VehicleInfo(vid)
            self.vehicles[vid] = info
            track = replay.get(vid, [])
            waited = self._held.pop(vid, [])
            if track and waited:  # stored before the replay read them: judged already
                last = track[-1].fix_time
                if starts is not None and starts.get(vid) is None:
                    # No snapshot: the track is only the last rebuild_window before the newest
                    # stored fix. What waited from before that was never judged: first, in
                    # order (a new terminal's backlog of hours lost its start otherwise).
                    first = track[0].fix_time
                    track = [p for p in waited if p.fix_time < first] + track
                waited = [p for p in waited if p.fix_time > last]
            if track or waited:
                self._feed(info, track + waited if track else waited)
            since = offline.get(vid)
            if since is not None:
                self._back_online(vid, since, waited)

    def _back_online(self, vehicle_id: int, since: datetime, waited: list[Position]) -> None:
        """An OFFLINE alert the restored state does not know is running (its worker opened it
        after its last snapshot, or crashed before saving it): a wall-clock episode, which no
        replay of positions brings back. The vehicle reports again, so it ends, at its first
        report since (or now, when it only authenticated); a rule that knew closes it the same
        way, and the store ignores the second close."""
        back = next((p.received_time for p in waited if p.received_time >= since), None)
        end = back or datetime.now(UTC)
        self._add([AlertEvent("close", OFFLINE_ALERT, vehicle_id, OFFLINE_ALERT, since, end=end)])

    def _lost(self, vehicle_id: int) -> bool:
        """Another process claimed the vehicle: forget it here (True if it was known)."""
        if vehicle_id in self._held:
            return False  # claimed here again meanwhile
        self.vehicles.pop(vehicle_id, None)
        return self.engine.forget(vehicle_id)

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
                if result.outcome in ("inserted", "staged"):  # a new alert, or a new stage
                    log.info(
                        "alert %s %s: %s of vehicle %s (severity %s%s), key %s",
                        result.alert_id, "opened" if result.outcome == "inserted" else "staged",
                        event.type, event.vehicle_id, event.severity,
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
        planned = self.actions.plan(event, info.plate if info else None, datetime.now(UTC))
        if planned is not None:
            self._spawn(self.send_text(planned, alert_id))

    async def send_text(self, planned: PlannedText, alert_id: int) -> str:
        """Send an automatic text and record the outcome (push row and the alert's audit)."""
        vehicle_id = planned.event.vehicle_id
        text = planned.command
        result, serial, push_id = await self.push(
            vehicle_id, f"text:{planned.event.type}", text, alert_id=alert_id
        )
        if result == DUPLICATE:
            log.info("alert %s already had its automatic text: not sent again", alert_id)
            return result
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
            self._push_again.add(vehicle_id)  # it may have planned with the old fences
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
            if vehicle_id in self._push_again and not self._closed:
                self._push_again.discard(vehicle_id)
                self._spawn(self.push_enforcement(vehicle_id))

    def _repush_areas(self) -> None:
        """Push the changed fences to the terminals held here (a few at a time: a change to
        a fence that concerns everyone is one message to each of thousands)."""
        held = [v for v in self._enforced if self.gateway.holds(v)]
        if not held:
            return
        gate = asyncio.Semaphore(20)

        async def one(vehicle_id: int) -> None:
            async with gate:
                await self.push_enforcement(vehicle_id)

        for vehicle_id in held:
            self._spawn(one(vehicle_id))

    # ------------------------------------------------------------------ sending

    async def push(
        self,
        vehicle_id: int,
        item: str,
        command: Command,
        *,
        alert_id: int | None = None,
        content: Any = None,
    ) -> tuple[str, int | None, int | None]:
        """Record, send (through the gateway) and await one command: (result, serial, push
        row id); the result is the terminal's answer or why there was none, or ``DUPLICATE``
        (no push row) for an automatic text the alert already had."""
        if content is None:
            content = command_to_json(command)
        push_id = await pushes.begin(
            self.pool, vehicle_id, command.KIND, item, content, alert_id=alert_id
        )
        if push_id is None:
            return DUPLICATE, None, None
        try:
            reply = await self.gateway.send(vehicle_id, command, timeout=self.command_timeout)
        except CommandFailed as failed:
            result, serial, answered = failed.reason, None, None
        else:
            result, serial, answered = reply.result, reply.serial, reply.answered_at
        await pushes.finish(self.pool, push_id, result, serial=serial, answered_at=answered)
        return result, serial, push_id

    # ------------------------------------------------------------------ fences

    def _fences_announced(self, _payload: str) -> None:
        """A NOTIFY of a geofence change: reload soon (a burst of them, once)."""
        if self._closed or self._fence_news:
            return
        self._fence_news = True
        self._spawn(self._reload_announced())

    async def _reload_announced(self) -> None:
        self._fence_news = False
        await self.reload_fences()

    async def reload_fences(self, force: bool = False) -> bool:
        """Rebuild the fence index if the geofences changed (then re-push the areas of the
        terminals held here), and reload the watchlist if it did; True if anything was
        reloaded."""
        reloaded = False
        async with self._fence_lock:
            fingerprint = await geofences.fingerprint(self.pool)
            if force or fingerprint != self._fence_print:
                self.index.rebuild(await geofences.load(self.pool))
                first = self._fence_print is None
                self._fence_print = fingerprint
                self.stats.fence_reloads += 1
                reloaded = True
                if not first:
                    self._repush_areas()
        watch_print = await self.alerts.watchlist_fingerprint()
        if force or watch_print != self._watch_print:
            self.engine.set_watchlist(await self.alerts.watchlist_reasons())
            self._watch_print = watch_print
            reloaded = True
        return reloaded


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
