"""The alarm queue's endpoints: the queue, an alert's timeline, handle, close and review.

Every change checks first that the alert's vehicle is in the user's scope (another company's
alert is a 404, as if it did not exist), then goes through the lifecycle in store.alerts (the
row locked, the step checked by alerts.lifecycle, the audit row written in one transaction):
a step the lifecycle refuses is a 409 with its reason. Acknowledging is the Api's own endpoint
(it confirms terminal alarms with 0x8203 through the supervision service); closing an open
alert acknowledges it too, and the supervision service's confirmation loop answers that
terminal within its interval, whichever worker holds it.

Handling with a text to the driver sends the text first, through the command gateway, and
records the handling only if the terminal accepted it: "text sent" in the ledger must mean the
driver got it. A text that did not go through is still in the audit trail (action ``text``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from twisted.web.server import Request

from alerts.commands import ACCEPTED, CommandFailed, Text
from alerts.lifecycle import (
    HANDLING_ACTIONS,
    REVIEW_VERDICTS,
    Action,
    LifecycleError,
    transition,
)
from maps.api import Api, Routes
from maps.web import ApiError, int_arg, json_body, str_arg
from store import dashboard
from store.alerts import AlertError, AlertNotFound
from store.users import Session

MAX_TEXT = 200  # characters: what a terminal's display and TTS take in one message
MAX_NOTE = 2000
REVIEWERS = ("supervisor", "admin")
#: HTTP status for a command that got no answer, by reason (offline: nothing was sent).
NO_ANSWER_STATUS = {"offline": 409, "timeout": 504, "disconnected": 504, "invalid": 400}


def alert_id_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"alert id {text!r}: not an integer") from None
    if not 0 < value < 2**63:
        raise ApiError(400, f"alert id {value}: out of range")
    return value


def text_field(body: dict[str, Any], name: str, limit: int, required: bool = False) -> str | None:
    """An optional (or required) non-blank string field of at most ``limit`` characters."""
    value = body.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ApiError(400, f"{name}: required")
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise ApiError(400, f"{name}: a string of at most {limit} characters")
    return value.strip()


def bool_field(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"{name}: true or false")
    return value


def no_answer(failed: CommandFailed, what: str) -> ApiError:
    """The error for a command the terminal never answered, saying whether it was sent."""
    if failed.reason == "offline":
        return ApiError(409, f"{what}: the terminal is not connected (offline); nothing was sent")
    return ApiError(
        NO_ANSWER_STATUS.get(failed.reason, 502),
        f"{what}: no answer from the terminal ({failed.reason}: {failed.detail})",
    )


class AlarmApi:
    """The queue and the lifecycle steps besides acknowledge (which is :class:`Api`'s)."""

    def __init__(self, api: Api, gateway: Any = None, command_timeout: float = 15.0) -> None:
        self.api = api
        self.gateway = gateway
        self.command_timeout = command_timeout

    def routes(self) -> Routes:
        return {
            ("GET", ("alert-queue",)): self.queue,
            ("GET", ("alerts", "{}", "timeline")): self.timeline,
            ("POST", ("alerts", "{}", "handle")): self.handle,
            ("POST", ("alerts", "{}", "close")): self.close,
            ("POST", ("alerts", "{}", "review")): self.review,
        }

    async def queue(self, request: Request, _: list[str]) -> tuple[int, Any]:
        """``?view=pending|handled|review&limit=N``: most urgent first (review: newest)."""
        session = await self.api.user(request)
        view = str_arg(request, "view") or "pending"
        limit = int_arg(request, "limit", 200, 1, 1000)
        assert limit is not None
        if view not in dashboard.QUEUE_VIEWS:
            raise ApiError(400, f"view={view!r}: one of {', '.join(dashboard.QUEUE_VIEWS)}")
        async with self.api.pool.acquire() as conn:
            found = await dashboard.alert_queue(conn, session.user.scope, view, limit)
        return 200, {"view": view, "alerts": [a.to_json() for a in found]}

    async def timeline(self, request: Request, args: list[str]) -> tuple[int, Any]:
        """The alert, its incident timeline (stages) and its audit trail (who did what)."""
        session = await self.api.user(request)
        alert_id = alert_id_arg(args[0])
        async with self.api.pool.acquire() as conn:
            found = await dashboard.alert(conn, session.user.scope, alert_id)
            if found is None:
                raise ApiError(404, f"no alert {alert_id}")
            trail = await dashboard.audit(conn, session.user.scope, alert_id)
        return 200, {"alert": found.to_json(), "audit": [e.to_json() for e in trail]}

    async def _visible(self, session: Session, alert_id: int) -> str:
        """The status of an alert in scope (404 otherwise)."""
        async with self.api.pool.acquire() as conn:
            found = await dashboard.alert(conn, session.user.scope, alert_id)
        if found is None:
            raise ApiError(404, f"no alert {alert_id}")
        return found.status

    async def _step(self, call: Any, alert_id: int, *args: Any) -> tuple[int, Any]:
        try:
            changed = await call(alert_id, *args)
        except AlertNotFound:
            raise ApiError(404, f"no alert {alert_id}") from None
        except (AlertError, LifecycleError) as exc:
            raise ApiError(409, str(exc)) from None
        return 200, {"alert": changed.to_json()}

    async def handle(self, request: Request, args: list[str]) -> tuple[int, Any]:
        """``{"action": one of HANDLING_ACTIONS, "note": "...", "text": "...", "tts": bool,
        "display": bool}``; with a text the action is ``text_sent`` and the text goes to the
        driver first (409 offline, 504 no answer, 502 refused: nothing recorded as handled)."""
        session = await self.api.user(request, change=True)
        alert_id = alert_id_arg(args[0])
        body = json_body(request)
        note = text_field(body, "note", MAX_NOTE)
        text = text_field(body, "text", MAX_TEXT)
        action = body.get("action", "text_sent" if text else None)
        if action not in HANDLING_ACTIONS:
            raise ApiError(400, f"action {action!r}: one of {', '.join(HANDLING_ACTIONS)}")
        if text is not None and action != "text_sent":
            raise ApiError(400, "a text goes with action 'text_sent'")
        if action == "text_sent" and text is None:
            raise ApiError(400, "action 'text_sent': give the text to send")
        if action == "note" and note is None:
            raise ApiError(400, "action 'note': the note is required")
        status = await self._visible(session, alert_id)
        by = session.user.username
        try:  # refuse before anything is sent to the driver
            transition(
                status,
                Action.HANDLE,
                by=by,
                at=datetime.now(UTC),
                handling_action=action,
                note=note,
                alert_id=alert_id,
            )
        except LifecycleError as exc:
            raise ApiError(409, str(exc)) from None
        if text is not None:
            outcome = await self._send_text(session, alert_id, text, body)
            note = f"{note}\n[{text}] → {outcome}" if note else f"[{text}] → {outcome}"
        return await self._step(self.api.alerts.handle, alert_id, by, action, note)

    async def _send_text(
        self, session: Session, alert_id: int, text: str, body: dict[str, Any]
    ) -> str:
        if self.gateway is None:
            raise ApiError(503, "sending texts needs the server's command gateway")
        tts, display = bool_field(body, "tts", True), bool_field(body, "display", True)
        try:
            command = Text(text, tts=tts, display=display)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        async with self.api.pool.acquire() as conn:
            found = await dashboard.alert(conn, session.user.scope, alert_id)
        assert found is not None  # checked just before
        by = session.user.username
        try:
            reply = await self.gateway.send(
                found.vehicle_id, command, timeout=self.command_timeout, requested_by=by
            )
        except CommandFailed as failed:
            await self.api.alerts.record(
                alert_id,
                "text",
                {"text": text, "tts": tts, "display": display, "result": failed.reason},
                actor=by,
            )
            raise no_answer(failed, "the text to the driver") from None
        await self.api.alerts.record(
            alert_id,
            "text",
            {
                "text": text,
                "tts": tts,
                "display": display,
                "result": reply.result,
                "serial": reply.serial,
            },
            actor=by,
        )
        if reply.result != ACCEPTED:
            raise ApiError(
                502,
                f"the terminal answered {reply.result}: the text was not shown;"
                " the alert was not marked handled",
            )
        return reply.result

    async def close(self, request: Request, args: list[str]) -> tuple[int, Any]:
        """``{"note": "..."}`` (required unless the alert was handled)."""
        session = await self.api.user(request, change=True)
        alert_id = alert_id_arg(args[0])
        note = text_field(json_body(request), "note", MAX_NOTE)
        await self._visible(session, alert_id)
        return await self._step(self.api.alerts.close, alert_id, session.user.username, note)

    async def review(self, request: Request, args: list[str]) -> tuple[int, Any]:
        """``{"verdict": "approved"|"rejected", "note": "..."}``: supervisors and admins, once."""
        session = await self.api.user(request, change=True)
        alert_id = alert_id_arg(args[0])
        body = json_body(request)
        await self._visible(session, alert_id)  # another company's alert: 404 for anyone
        if session.user.role not in REVIEWERS:
            raise ApiError(403, "only a supervisor (or an admin) reviews how alarms were handled")
        verdict = body.get("verdict")
        note = text_field(body, "note", MAX_NOTE, required=True)
        if verdict not in REVIEW_VERDICTS:
            raise ApiError(400, f"verdict {verdict!r}: one of {', '.join(REVIEW_VERDICTS)}")
        return await self._step(
            self.api.alerts.review, alert_id, session.user.username, verdict, note
        )
