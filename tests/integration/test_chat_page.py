"""The chat page at / in real headless Chromium (Debian's, driven by Playwright): pick a model,
type, watch the answer stream in, press Stop; the conversation is kept and sent back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator

import pytest

from tests.integration.processes import REPO, Worker, live_worker
from protocol import slots_key

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = REPO / "test-output"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not os.path.exists(CHROMIUM):
        message = "Debian's chromium is not installed (make test installs it: `make browser`)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def slow_worker(env, workdir, redis_server, gateway) -> Iterator[Worker]:
    with live_worker(["echo-slow"], env, workdir, redis_server.client, stop_signal=signal.SIGKILL) as worker:
        yield worker


def _assistant_text(page) -> str:
    return page.locator(".msg.assistant").last.inner_text()


def test_type_watch_it_stream_then_stop(browser, gateway, slow_worker, redis_server) -> None:
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    page.goto(gateway.base_url + "/")
    page.wait_for_function("[...document.querySelectorAll('#model option')].some(o => o.value === 'echo-slow')")
    page.select_option("#model", "echo-slow")
    page.fill("#prompt", "Please echo this sentence back to me, slowly.")
    page.click("#send")
    page.wait_for_function("document.querySelector('.msg.assistant') && document.querySelector('.msg.assistant').innerText.length > 10")
    first = _assistant_text(page)
    page.wait_for_timeout(400)
    assert len(_assistant_text(page)) > len(first), "the answer streams in, piece by piece"
    assert page.is_enabled("#stop") and page.is_disabled("#send")
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "chat-page-streaming.png"))
    page.click("#stop")
    page.wait_for_selector(".msg.assistant[data-stopped='true']")
    stopped = _assistant_text(page)
    page.wait_for_timeout(500)
    assert _assistant_text(page) == stopped, "nothing arrives after Stop"
    assert stopped.rstrip().endswith("stopped") and page.is_enabled("#send")

    def slots_free() -> bool:  # the worker dropped the request: its slot is free again
        return redis_server.client.hget(slots_key("echo-slow"), slow_worker.name) == b"4/4"

    deadline = time.monotonic() + 10
    while not slots_free() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert slots_free()
    page.screenshot(path=str(SCREENSHOTS / "chat-page-stopped.png"))
    page.close()


def test_the_conversation_is_kept_and_sent_with_the_next_question(browser, gateway) -> None:
    page = browser.new_page()
    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if r.url.endswith("/v1/chat/completions") else None)
    page.goto(gateway.base_url + "/")
    page.wait_for_function("[...document.querySelectorAll('#model option')].some(o => o.value === 'tiny-a')")
    page.select_option("#model", "tiny-a")
    for question in ("Hello there", "And a second question"):
        page.fill("#prompt", question)
        page.press("#prompt", "Enter")
        page.wait_for_function("document.querySelector('#send') && !document.querySelector('#send').disabled "
                               f"&& document.querySelectorAll('.msg.assistant .meta').length >= {1 + (question != 'Hello there')}")  # fmt: skip
    roles = [m["role"] for m in bodies[-1]["messages"]]
    assert roles == ["user", "assistant", "user"] and bodies[-1]["messages"][0]["content"] == "Hello there"
    shown = page.evaluate("[...document.querySelector('.msg.assistant').childNodes]"
                          ".filter(n => n.nodeType === Node.TEXT_NODE).map(n => n.textContent).join('')")  # fmt: skip
    assert bodies[-1]["messages"][1]["content"] == shown  # the answer as displayed, sent back
    assert page.locator(".msg.user").count() == 2
    page.click("#new")
    assert page.locator(".msg").count() == 0
    page.close()


def test_the_page_is_open_but_its_api_calls_need_the_key(env, workdir, browser, workers) -> None:
    from tests.integration.processes import Gateway

    guarded = Gateway({**env, "QUEUECHAT_API_KEYS": "page-key"}, workdir)
    try:
        page = browser.new_page()
        page.goto(guarded.base_url + "/")
        page.wait_for_function("document.querySelector('#status').innerText.length > 0 "
                               "&& !document.querySelector('#status').innerText.includes('loading')")  # fmt: skip
        assert "API key" in page.inner_text("#status") or "key" in page.inner_text("#status").lower()
        page.fill("#key", "page-key")
        page.dispatch_event("#key", "change")
        page.wait_for_function("[...document.querySelectorAll('#model option')].some(o => o.value === 'tiny-a')")
        page.close()
    finally:
        guarded.stop()
