"""API keys, body size and request limits, and the bounded backlog (429), on a gateway of its own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.integration.processes import Gateway, pause_queue
from tests.spec import assert_valid

KEYS = ("key-one", "key-two")
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def guarded(env, workdir, workers) -> Iterator[Gateway]:
    extra = {
        "QUEUECHAT_API_KEYS": ",".join(KEYS),
        "QUEUECHAT_MAX_BODY_BYTES": "4096",
        "QUEUECHAT_MAX_QUEUE": "2",
        "QUEUECHAT_MAX_TOKENS_LIMIT": "100",
        "QUEUECHAT_MAX_MESSAGES": "3",
        "QUEUECHAT_MAX_PROMPT_CHARS": "1000",
    }
    server = Gateway({**env, **extra}, workdir)
    yield server
    server.stop()


def _client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=60)


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert_valid(response.json(), "ErrorResponse")
    return response.json()["error"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models"),
     ("GET", "/v1/models/tiny-a"), ("GET", "/v1/nothing-here")],
)  # fmt: skip
@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic key-one", "Bearer key-one-and-more"])
def test_every_route_but_health_needs_a_valid_key(guarded, method: str, path: str, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    response = httpx.request(method, f"{guarded.base_url}{path}", headers=headers, json={"model": "tiny-a"})
    assert _error(response, 401)["code"] == "invalid_api_key"


def test_health_is_open(guarded) -> None:
    assert httpx.get(f"{guarded.base_url}/health").status_code == 200


@pytest.mark.parametrize("key", KEYS)
def test_each_configured_key_works_through_the_sdk(guarded, key: str) -> None:
    reply = _client(guarded, key).chat.completions.create(model="tiny-a", messages=USER, max_tokens=3)
    assert reply.usage.completion_tokens >= 1


def test_the_sdk_reports_a_wrong_key_as_an_authentication_error(guarded) -> None:
    with pytest.raises(openai.AuthenticationError):
        _client(guarded, "nope").models.list()


def _authed(path: str) -> dict:
    return {"Authorization": f"Bearer {KEYS[0]}", "content-type": "application/json"}


def test_a_body_over_the_limit_is_413(guarded) -> None:
    body = {"model": "tiny-a", "messages": [{"role": "user", "content": "x" * 5000}]}
    response = httpx.post(f"{guarded.base_url}/v1/chat/completions", json=body, headers=_authed(""))
    assert _error(response, 413)["code"] == "request_too_large"


def test_a_chunked_body_over_the_limit_is_413(guarded) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "tiny-a", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    response = httpx.post(f"{guarded.base_url}/v1/chat/completions", content=chunks(), headers=_authed(""))
    assert "content-length" not in response.request.headers
    assert _error(response, 413)["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": USER, "max_tokens": 101}, "max_tokens"),
        ("/v1/chat/completions", {"messages": USER, "max_completion_tokens": 500}, "max_completion_tokens"),
        ("/v1/chat/completions", {"messages": USER * 4}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "y" * 1001}]}, "messages"),
        ("/v1/completions", {"prompt": "z" * 1001}, "prompt"),
    ],
)
def test_requests_beyond_the_limits_are_400(guarded, path: str, body: dict, param: str) -> None:
    response = httpx.post(f"{guarded.base_url}{path}", json={"model": "tiny-a", **body}, headers=_authed(""))
    assert _error(response, 400)["param"] == param


def test_a_full_backlog_answers_429_with_retry_after_and_loses_nothing(
    guarded, workers, redis_server, celery_control
) -> None:
    control = celery_control
    worker_b = workers["tiny-b"].name
    client = _client(guarded, KEYS[1])
    pause_queue(control, "tiny-b", worker_b)
    try:
        with ThreadPoolExecutor(2) as pool:
            # One after the other: sent together, the second may count the first twice (queued, and
            # still being sent) and get the 429 itself: the limit errs low under a burst, by design.
            queued = []
            for n in (1, 2):
                queued.append(pool.submit(client.chat.completions.create, model="tiny-b", messages=USER, max_tokens=2))
                deadline = time.monotonic() + 10
                while redis_server.client.llen("tiny-b") < n and time.monotonic() < deadline and not queued[-1].done():
                    time.sleep(0.05)
            assert redis_server.client.llen("tiny-b") == 2, (guarded.log_tail(), [f.exception(0) for f in queued if f.done()])
            response = httpx.post(f"{guarded.base_url}/v1/chat/completions", headers=_authed(""),
                                  json={"model": "tiny-b", "messages": USER}, timeout=30)  # fmt: skip
            assert _error(response, 429)["type"] == "rate_limit_error"
            assert response.headers["retry-after"] == "1"
            assert client.chat.completions.create(model="tiny-a", messages=USER, max_tokens=2)  # other queues flow
            control.add_consumer("tiny-b", destination=[worker_b], reply=True, timeout=5)
            assert all(f.result(timeout=60).usage.completion_tokens >= 1 for f in queued)
    finally:
        control.add_consumer("tiny-b", destination=[worker_b], reply=True, timeout=5)
