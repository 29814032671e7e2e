"""The chat page at / in real headless Chromium (Debian's, driven by Playwright): pick a model,
type, watch the answer stream in, press Stop; the conversation is kept and sent back; only chat
models are offered; a queued request says so; replies are rendered as (escaped) markdown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from protocol import slots_key
from tests.integration.processes import REPO, Worker, live_worker

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


@pytest.fixture(scope="module")
def embed_worker(env, workdir, redis_server, gateway) -> Iterator[Worker]:
    """An embeddings-only model is served too: the page must not offer it for chat."""
    with live_worker(["tiny-embed"], env, workdir, redis_server.client) as worker:
        yield worker


WAITING = "waiting for a worker\u2026"
LAST = "[...document.querySelectorAll('.msg.assistant')].pop()"  # the newest answer's bubble
STREAMED = (f"(b => b && !b.querySelector('.waiting') "
            f"&& b.querySelector('.content').innerText.length > 10)({LAST})")  # fmt: skip


def _assistant_text(page) -> str:
    return page.locator(".msg.assistant").last.inner_text()


def _open_with(page, base_url: str, model: str) -> None:
    page.goto(base_url + "/")
    page.wait_for_function(f"[...document.querySelectorAll('#model option')].some(o => o.value == '{model}')")
    page.select_option("#model", model)


def _options(page) -> list[str]:
    return page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")


def _can_chat(entry: dict) -> bool:
    return "chat" in entry.get("capabilities", ["chat"])  # no field: an older gateway, taken to chat


def test_type_watch_it_stream_then_stop(browser, gateway, slow_worker, redis_server) -> None:
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    _open_with(page, gateway.base_url, "echo-slow")
    page.fill("#prompt", "Please echo this sentence back to me, slowly.")
    page.click("#send")
    page.wait_for_function(STREAMED)
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
    streams: list[str] = []  # each answer's SSE body, as the page received it

    def relay(route) -> None:  # passed through whole (not streamed), keeping a copy
        response = route.fetch()
        streams.append(response.text())
        route.fulfill(response=response)

    page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if r.url.endswith("/v1/chat/completions") else None)
    page.route("**/v1/chat/completions", relay)
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
    chunks = [json.loads(line[6:]) for line in streams[0].splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]  # fmt: skip
    received = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert received and bodies[-1]["messages"][1]["content"] == received  # the answer as it came, sent back
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


def test_only_chat_models_are_offered_and_the_first_is_chosen(browser, gateway, embed_worker) -> None:
    served = httpx.get(f"{gateway.base_url}/v1/models").json()["data"]
    by_id = {m["id"]: m for m in served}
    assert "tiny-embed" in by_id and "tiny-a" in by_id
    assert not _can_chat(by_id["tiny-embed"]), f"/v1/models should say it cannot chat: {by_id['tiny-embed']}"
    chat_models = [m["id"] for m in served if _can_chat(m)]
    page = browser.new_page()  # a fresh context: no model remembered from earlier tests
    page.goto(gateway.base_url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    options = _options(page)
    assert options == chat_models and "tiny-embed" not in options
    assert page.eval_on_selector("#model", "s => s.value") == options[0] and page.is_enabled("#send")
    for model in served:  # the context length, where known, is the option's tooltip
        if model["id"] in options and model.get("max_model_len"):
            title = page.eval_on_selector(f"#model option[value='{model['id']}']", "o => o.title")
            assert str(model["max_model_len"]) in title
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "chat-page-models.png"))
    page.close()


def test_the_picker_filter_with_no_chat_model_and_with_an_older_gateway(browser, gateway) -> None:
    """/v1/models answered by the test: what the page makes of entries with and without capabilities."""

    def serve(entries: list[dict]):
        def handler(route) -> None:
            body = json.dumps({"object": "list", "data": entries})
            route.fulfill(status=200, content_type="application/json", body=body)

        return handler

    page = browser.new_page()
    page.route("**/v1/models", serve([{"id": "emb", "capabilities": ["embeddings"], "max_model_len": 256}]))
    page.goto(gateway.base_url + "/")
    page.wait_for_function("document.querySelector('#status').innerText.includes('no chat model')")
    assert page.inner_text("#status") == "no chat model is being served right now"
    assert _options(page) == [] and page.is_disabled("#send")
    page.screenshot(path=str(SCREENSHOTS / "chat-page-no-chat-model.png"))
    page.close()

    page = browser.new_page()
    entries = [{"id": "a-embed", "capabilities": ["embeddings"]}, {"id": "b-old"},  # no field: taken to chat
               {"id": "c-chat", "capabilities": ["chat", "completions"], "max_model_len": 8192},
               {"id": "d-text", "capabilities": ["completions"]}]  # fmt: skip
    page.route("**/v1/models", serve(entries))
    page.goto(gateway.base_url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    assert _options(page) == ["b-old", "c-chat"]
    assert page.eval_on_selector("#model", "s => s.value") == "b-old"
    assert "8192" in page.eval_on_selector("#model option[value='c-chat']", "o => o.title")
    assert page.is_enabled("#send") and page.inner_text("#status") == ""
    page.close()


def test_a_queued_request_says_it_waits_for_a_worker(browser, gateway, slow_worker, celery_control) -> None:
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    _open_with(page, gateway.base_url, "echo-slow")
    # No worker takes echo-slow's requests while its consumer is paused: they wait in the queue.
    assert celery_control.cancel_consumer("echo-slow", destination=[slow_worker.name], reply=True, timeout=5)
    try:
        page.fill("#prompt", "A first question, given up while it waits")
        page.click("#send")
        page.wait_for_selector(".msg.assistant .waiting")
        assert _assistant_text(page) == WAITING
        page.wait_for_timeout(1500)  # the gateway checks the queue each second: still waiting
        assert _assistant_text(page) == WAITING and page.is_enabled("#stop")
        page.click("#stop")  # Stop works while queued
        page.wait_for_selector(".msg.assistant[data-stopped='true']")
        assert _assistant_text(page).strip() == "stopped" and page.is_enabled("#send")
        page.click("#new")

        page.fill("#prompt", "Please echo this sentence back to me, slowly.")
        page.click("#send")
        page.wait_for_function(f"{LAST}.querySelector('.waiting')")
        page.wait_for_timeout(500)
        assert page.locator(".msg.assistant").last.inner_text() == WAITING
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "chat-page-waiting.png"))
    finally:
        assert celery_control.add_consumer("echo-slow", destination=[slow_worker.name], reply=True, timeout=5)
    page.wait_for_function(STREAMED, timeout=30_000)  # the worker takes it: the text replaces the note
    assert _assistant_text(page).startswith("Please echo") and WAITING not in _assistant_text(page)
    page.click("#stop")
    page.wait_for_function(f"{LAST}.dataset.stopped === 'true'")
    page.close()


TRICKY = """# Title
Some **bold**, *italic* and `a < b` [docs](https://example.com/a?x=1&y=2).

- one
- **two**
  - nested

1. first
2. second

```python
if a < b:
    print("<b>hi</b>")
```
<script>alert(1)</script> <img src=x onerror="window.__xss = 1">
[x](javascript:alert(1)) [d](data:text/html,hi)
```js
unclosed = "fence" """

EXPECTED = (
    "<h1>Title</h1>"
    "<p>Some <strong>bold</strong>, <em>italic</em> and <code>a &lt; b</code> "
    '<a href="https://example.com/a?x=1&amp;y=2" target="_blank" rel="noopener noreferrer">docs</a>.</p>'
    "<ul><li>one</li><li><strong>two</strong><ul><li>nested</li></ul></li></ul>"
    "<ol><li>first</li><li>second</li></ol>"
    '<pre><code class="language-python">if a &lt; b:\n'
    "    print(&quot;&lt;b&gt;hi&lt;/b&gt;&quot;)</code></pre>"
    "<p>&lt;script&gt;alert(1)&lt;/script&gt; &lt;img src=x onerror=&quot;window.__xss = 1&quot;&gt;<br>"
    "[x](javascript:alert(1)) [d](data:text/html,hi)</p>"
    '<pre><code class="language-js">unclosed = &quot;fence&quot; </code></pre>'
)


def test_the_markdown_renderer_formats_and_escapes(browser, gateway) -> None:
    page = browser.new_page()
    page.goto(gateway.base_url + "/")
    assert page.evaluate("renderMarkdown", TRICKY) == EXPECTED
    insert = ("t => { const d = document.createElement('div'); d.id = 'probe'; "
              "d.innerHTML = renderMarkdown(t); document.body.appendChild(d); }")  # fmt: skip
    page.evaluate(insert, TRICKY)
    page.wait_for_timeout(300)  # an <img onerror> would have fired by now
    probe = "#probe"
    dangerous = ", ".join(f"{probe} {tag}" for tag in ("script", "img", "iframe", "[onerror]", "[onclick]"))
    assert page.eval_on_selector_all(dangerous, "es => es.length") == 0
    links = "as => as.map(a => [a.getAttribute('href'), a.rel, a.target])"
    hrefs = page.eval_on_selector_all(f"{probe} a", links)
    assert hrefs == [["https://example.com/a?x=1&y=2", "noopener noreferrer", "_blank"]]
    assert page.evaluate("window.__xss") is None
    text = page.inner_text(probe)
    assert "<script>alert(1)</script>" in text and '<img src=x onerror="window.__xss = 1">' in text
    items = page.eval_on_selector_all(f"{probe} li", "ls => ls.map(l => l.firstChild.textContent)")
    assert items == ["one", "two", "nested", "first", "second"]
    unsafe_links = ("[x](javascript:alert(1))", "[x](JavaScript:alert(1))", "[x](data:text/html;base64,PD4=)",
                    "[x](//evil.example)", "[x](https:/evil)", '[x](https://a.b/"onmouseover="alert(1))')
    for unsafe in unsafe_links:
        html = page.evaluate("renderMarkdown", unsafe)
        assert 'href="javascript' not in html.lower() and "href=\"data" not in html and 'href="/' not in html
        assert '"onmouseover' not in html
    page.close()


def test_an_assistant_reply_with_markdown_is_rendered(browser, gateway, slow_worker) -> None:
    """The echo model repeats the prompt, markdown included: the bubble shows elements, not stars."""
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    _open_with(page, gateway.base_url, "echo-slow")
    page.fill("#prompt", "Run `ls`:\n- **one**\n- <i>two</i>\n")
    page.click("#send")
    second_item_done = f"({LAST}.querySelectorAll('.content li')[1] || {{}}).textContent?.includes('</i>')"
    page.wait_for_function(second_item_done, timeout=30_000)
    bubble = page.locator(".msg.assistant").last
    assert bubble.locator(".content code").first.inner_text() == "ls"
    assert bubble.locator(".content li strong").first.inner_text() == "one"
    assert bubble.locator(".content li").nth(1).inner_text().startswith("<i>two</i>")  # shown, not obeyed
    assert bubble.locator(".content i").count() == 0
    assert page.locator(".msg.user").last.inner_text() == "Run `ls`:\n- **one**\n- <i>two</i>"  # plain text
    page.screenshot(path=str(SCREENSHOTS / "chat-page-markdown.png"))
    page.click("#stop")
    page.wait_for_function(f"{LAST}.dataset.stopped === 'true'")
    page.close()
