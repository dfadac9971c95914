"""The alarm queue and the vehicle panel in a real headless Chromium (Debian's, through
playwright's ``executable_path``; no browser download):

* two dispatchers of one company in two browser contexts: one acknowledges and handles an
  alarm (a note, a phone call), the other sees it leave its queue and finds it, with its
  history, under "handled"; the alarm beep is counted and the mute toggle remembered;
* a dispatcher opens a vehicle's panel from its alarm and sends a text, a position query and a
  tracking request to a terminal connected over real TCP (tests/supervision_harness.py), which
  answers each; the panel shows each answer, and "offline" once the terminal is gone.

Synchronisation by DOM state only (data-* attributes, locator assertions; no sleeps, no eval:
the page's CSP forbids it). Screenshots go to the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, expect, sync_playwright

from protocols.jt808 import LocationQueryReply, Message, TerminalGeneralResponse
from store.users import add_user
from tests.aio import aio_test
from tests.dashboard_harness import PASSWORD, dashboard, password_hash
from tests.supervision_harness import running_supervision
from tests.terminal_client import Terminal, report
from tests.test_dashboard_browser import CHROMIUM, TIMEOUT_MS

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required"]  # fmt: skip


def _launch(p: Any) -> Browser:
    return p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)


def _login(browser: Browser, url: str, username: str, errors: list[str]) -> Page:
    page = browser.new_context(viewport={"width": 1366, "height": 768}, locale="zh-CN").new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector("body[data-state=login]")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_selector("body[data-state=ready]")
    page.wait_for_selector("#alerts[data-loaded=true]")
    return page


def _two_dispatchers(url: str, target: int, other: int, shots: Path) -> dict[str, Any]:
    errors: list[str] = []
    with sync_playwright() as p:
        browser = _launch(p)
        try:
            first = _login(browser, url, "disp_a", errors)
            second = _login(browser, url, "disp_a2", errors)
            before = sorted(int(x) for x in _attrs(second, "#alerts li", "data-alert-id"))
            beeps = first.get_attribute("body", "data-beeps")

            item = first.locator(f"#alerts li[data-alert-id='{target}']")
            item.locator("button.ack").click()
            expect(item).to_have_attribute("data-status", "acknowledged", timeout=TIMEOUT_MS)
            item = first.locator(f"#alerts li[data-alert-id='{target}']")
            item.locator("button.handle").click()
            form = item.locator("form.handle")
            form.locator("select[name=action]").select_option("phone_call")
            form.locator("textarea[name=note]").fill("已电话提醒司机减速")
            first.screenshot(path=str(shots / "queue-handle-form.png"))
            form.locator("button.submit").click()
            first.locator(f"#alerts li[data-alert-id='{target}']").wait_for(state="detached")
            expect(first.locator("#alert-count")).to_have_text("1", timeout=TIMEOUT_MS)

            second.reload()  # live updates come from the WebSocket (another branch); a reload here
            second.wait_for_selector("body[data-state=ready]")
            second.wait_for_selector("#alerts[data-loaded=true]")
            after = sorted(int(x) for x in _attrs(second, "#alerts li", "data-alert-id"))
            second.click("#alert-views button[data-view=handled]")
            second.wait_for_selector("#alerts[data-view=handled]")
            handled = second.locator(f"#alerts li[data-alert-id='{target}']")
            status = handled.get_attribute("data-status")
            handled.locator("button.details").click()
            history = handled.locator("ol.timeline li")
            expect(history).to_have_count(2, timeout=TIMEOUT_MS)  # acknowledged, handled
            lines = history.all_inner_texts()
            second.screenshot(path=str(shots / "queue-second-dispatcher.png"))

            # a supervisor reviews the handling: it leaves the "to review" list
            sup = _login(browser, url, "super", errors)
            sup.click("#alert-views button[data-view=review]")
            sup.wait_for_selector("#alerts[data-view=review]")
            to_review = sup.locator(f"#alerts li[data-alert-id='{target}']")
            to_review.locator("button.review").click()
            form = to_review.locator("form.review")
            form.locator("select[name=verdict]").select_option("rejected")
            form.locator("textarea[name=note]").fill("应先下发语音提醒")
            sup.screenshot(path=str(shots / "queue-review-form.png"))
            form.locator("button.submit").click()
            sup.locator(f"#alerts li[data-alert-id='{target}']").wait_for(state="detached")

            muted_before = first.get_attribute("#alarm-mute", "aria-pressed")
            first.click("#alarm-mute")
            first.reload()
            first.wait_for_selector("body[data-state=ready]")
            muted_after = first.get_attribute("#alarm-mute", "aria-pressed")
        finally:
            browser.close()
    return {"before": before, "after": after, "status": status, "lines": lines, "beeps": beeps,
            "muted": (muted_before, muted_after), "errors": errors}  # fmt: skip


def _attrs(page: Page, selector: str, name: str) -> list[str]:
    items = page.locator(selector)
    return [items.nth(i).get_attribute(name) or "" for i in range(items.count())]


@aio_test
async def test_handled_alarm_leaves_the_queue_of_another_dispatcher(
    db_url: str, tmp_path: Path
) -> None:
    async with dashboard(db_url) as dash:
        async with dash.pool.acquire() as conn:
            hashed = await asyncio.to_thread(password_hash)
            await add_user(conn, "disp_a2", "dispatcher", hashed, "公司A")
        target, other = dash.seeded.alerts["京A10001"], dash.seeded.alerts["京A10002"]
        seen = await asyncio.to_thread(_two_dispatchers, dash.url, target, other, tmp_path)
        async with dash.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT status, acknowledged_by, handled_by, handling_action, handling_note,"
                " reviewed_by, review_verdict, review_note FROM alerts WHERE id = $1", target,
            )  # fmt: skip
    print(f"\nscreenshots: {tmp_path}")
    assert seen["errors"] == [], seen["errors"]
    assert seen["before"] == sorted([target, other])
    assert seen["after"] == [other]  # gone from the other dispatcher's queue
    assert seen["status"] == "handled"
    assert "disp_a · 确认" in seen["lines"][0]
    assert "disp_a · 处理 · 电话联系 · 已电话提醒司机减速" in seen["lines"][1]
    assert seen["beeps"] == "1"  # two open speeding alarms on arrival: one beep
    assert seen["muted"] == ("false", "true")  # remembered across a reload
    assert tuple(row) == ("handled", "disp_a", "disp_a", "phone_call", "已电话提醒司机减速",
                          "super", "rejected", "应先下发语音提醒")  # fmt: skip
    for name in ("queue-handle-form.png", "queue-second-dispatcher.png", "queue-review-form.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def _panel_session(url: str, alert_id: int, vehicle_id: int, shots: Path, gone: Any) -> dict:
    """Open the panel from the alarm, send a text, a query and a tracking request; then (after
    ``gone()`` disconnected the terminal) a query that finds it offline."""
    errors: list[str] = []
    out: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = _launch(p)
        try:
            page = _login(browser, url, "disp_a", errors)
            item = page.locator(f"#alerts li[data-alert-id='{alert_id}']")
            item.locator("button.ack").click()
            expect(item).to_have_attribute("data-status", "acknowledged", timeout=TIMEOUT_MS)
            page.locator(f"#alerts li[data-alert-id='{alert_id}'] button.handle").click()
            form = page.locator(f"#alerts li[data-alert-id='{alert_id}'] form.handle")
            form.locator("input[name=send]").check()
            form.locator("input[name=text]").fill("您已超速，请减速慢行")
            form.locator("button.submit").click()
            page.locator(f"#alerts li[data-alert-id='{alert_id}']").wait_for(state="detached")
            page.click("#alert-views button[data-view=handled]")
            page.wait_for_selector("#alerts[data-view=handled]")
            page.locator(f"#alerts li[data-alert-id='{alert_id}'] .title").click()
            page.wait_for_selector(f"#panel[data-vehicle-id='{vehicle_id}'][data-loaded=true]")
            out["facts"] = page.inner_text("#panel-facts")
            reply = page.locator("#panel-reply")
            page.fill("#panel-text", "请在前方服务区休息")
            page.click("#panel-send")
            expect(reply).to_have_attribute("data-result", "accepted", timeout=TIMEOUT_MS)
            out["text"] = reply.inner_text()
            page.click("#panel-query")
            expect(reply).to_contain_text("31.20", timeout=TIMEOUT_MS)
            out["query"] = reply.inner_text()
            page.fill("#panel-interval", "5")
            page.fill("#panel-duration", "600")
            page.click("#panel-track")
            expect(reply).to_have_attribute("data-result", "failed", timeout=TIMEOUT_MS)
            out["track"] = reply.inner_text()
            page.screenshot(path=str(shots / "panel-commands.png"))
            gone()
            page.click("#panel-query")
            expect(reply).to_have_attribute("data-result", "error", timeout=TIMEOUT_MS)
            out["offline"] = reply.inner_text()
            expect(page.locator("#panel-title")).to_contain_text("离线", timeout=TIMEOUT_MS)
            page.screenshot(path=str(shots / "panel-offline.png"))
        finally:
            browser.close()
    out["errors"] = errors
    return out


async def _answer(terminal: Terminal, log: list[Message]) -> None:
    """The terminal's side: reports once, then answers commands (a text accepted, a query with
    its position, tracking refused: result 1) until cancelled."""
    await terminal.send(report(0))
    while True:
        message = await terminal.receive(3600)
        log.append(message)
        if message.msg_id == 0x8201:
            await terminal.send(LocationQueryReply(reply_serial=message.serial,
                                                   location=report(2)))  # fmt: skip
        elif message.msg_id in (0x8300, 0x8202):
            result = 1 if message.msg_id == 0x8202 else 0
            await terminal.send(TerminalGeneralResponse(
                reply_serial=message.serial, reply_id=message.msg_id, result=result))  # fmt: skip


@aio_test
async def test_panel_sends_commands_to_a_terminal_over_tcp(db_url: str, tmp_path: Path) -> None:
    async with (
        running_supervision(db_url, tmp_path / "ingest") as (ingest, supervision),
        dashboard(db_url, gateway=supervision.gateway) as dash,
    ):
        plate = "京A10002"  # phone 13800000001 in the harness's seed
        terminal = await Terminal.connect(ingest.port, "13800000001")
        await terminal.login(plate)
        log: list[Message] = []
        answering = asyncio.ensure_future(_answer(terminal, log))
        loop = asyncio.get_running_loop()

        def gone() -> None:  # called from the browser's thread
            async def close() -> None:
                answering.cancel()
                await terminal.close()
                while supervision.gateway.holds(dash.seeded.vehicles[plate]):
                    await asyncio.sleep(0.05)

            asyncio.run_coroutine_threadsafe(close(), loop).result(30)

        try:
            seen = await asyncio.to_thread(
                _panel_session, dash.url, dash.seeded.alerts[plate],
                dash.seeded.vehicles[plate], tmp_path, gone,
            )  # fmt: skip
            async with dash.pool.acquire() as conn:
                handled = await conn.fetchrow(
                    "SELECT status, handling_action, handling_note FROM alerts WHERE id = $1",
                    dash.seeded.alerts[plate],
                )
        finally:
            answering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await answering
            await terminal.close()
    print(f"\nscreenshots: {tmp_path}")
    assert seen["errors"] == [], seen["errors"]
    texts = [m for m in log if m.msg_id == 0x8300]
    assert tuple(handled) == ("handled", "text_sent", "[您已超速，请减速慢行] → accepted")
    assert [m.body.text for m in texts] == ["您已超速，请减速慢行", "请在前方服务区休息"]
    assert [m.msg_id for m in log if m.msg_id in (0x8201, 0x8202)] == [0x8201, 0x8202]
    tracking = next(m for m in log if m.msg_id == 0x8202)
    assert (tracking.body.interval_s, tracking.body.validity_s) == (5, 600)
    assert seen["text"].startswith("终端已接受")
    assert "31.20020, 121.50000 40 km/h" in seen["query"]
    assert seen["track"].startswith("终端执行失败")
    assert "not connected (offline); nothing was sent" in seen["offline"]
    assert "限速" in seen["facts"] and "今日驾驶" in seen["facts"]
    for name in ("panel-commands.png", "panel-offline.png"):
        assert (tmp_path / name).stat().st_size > 10_000
