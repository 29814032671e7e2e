"""Attacks on the gateway itself: text that is not Unicode, bodies that do not parse, clients that
send their request slowly or hold many connections.  Each must get a clear OpenAI-shaped error
(or a closed connection) while everyone else is served."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.adversarial.conftest import assert_serving
from tests.integration.processes import Gateway
from tests.spec import assert_valid

LONE = "\\ud800"  # a lone surrogate, as JSON spells it: valid JSON, not valid Unicode
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def _post_raw(gateway: Gateway, path: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}{path}", content=body, headers={"content-type": "application/json"},
                      timeout=30)  # fmt: skip


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert_valid(response.json(), "ErrorResponse")
    return response.json()["error"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", '{"model": "echo-slow", "messages": [{"role": "user", "content": "a%sb"}]}',
         "messages[0].content"),
        ("/v1/completions", '{"model": "echo-slow", "prompt": "%s"}', "prompt"),
        ("/v1/completions", '{"model": "echo-slow", "prompt": ["fine", "x%s"]}', "prompt[1]"),
        ("/v1/chat/completions", '{"model": "echo-slow", "messages": [{"role": "user", "content": "hi"}], '
         '"tools": [{"type": "function", "function": {"name": "f", "description": "%s"}}]}',
         "tools[0].function.description"),
        ("/v1/chat/completions", '{"model": "echo-slow", "messages": [{"role": "user", "content": "hi"}], '
         '"stop": ["%s"]}', "stop[0]"),
        ("/v1/embeddings", '{"model": "echo-slow", "input": ["ok", "%s"]}', "input[1]"),
    ],
)  # fmt: skip
def test_a_lone_surrogate_is_a_400_naming_its_parameter(hostile_gateway, hostile_redis, echo_worker,
                                                       path: str, body: str, param: str) -> None:  # fmt: skip
    error = _error(_post_raw(hostile_gateway, path, (body % LONE).encode()), 400)
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert_serving(hostile_gateway, hostile_redis.client, "echo-slow", echo_worker)


@pytest.mark.parametrize(
    "body",
    [b'{"model": "echo-slow", "prompt": "\xff\xfe"}',  # not UTF-8
     b'{"model": "echo-slow", "prompt": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",  # nested 50k deep
     b'{"model": "echo-slow", "prompt": "unterminated'],
)  # fmt: skip
def test_a_body_that_does_not_parse_is_an_invalid_request(hostile_gateway, body: bytes) -> None:
    error = _error(_post_raw(hostile_gateway, "/v1/completions", body), 400)
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_json", error


@pytest.fixture(scope="module")
def strict_gateway(hostile_env, hostile_dir, echo_worker) -> Iterator[Gateway]:
    limits = {"QUEUECHAT_HEADER_TIMEOUT": "1", "QUEUECHAT_BODY_TIMEOUT": "2"}
    server = Gateway({**hostile_env, **limits}, hostile_dir)
    yield server
    server.stop()


def _connect(gateway: Gateway) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    sock.settimeout(10)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def test_slowloris_connections_are_closed_and_others_are_served(strict_gateway, hostile_redis, echo_worker) -> None:
    """Clients that trickle their headers a byte at a time lose their connection after the header
    timeout (1 s here), however steadily they trickle; the gateway answers others meanwhile."""
    socks = [_connect(strict_gateway) for _ in range(60)]
    started = time.monotonic()
    try:
        for sock in socks:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        closed: set[int] = set()
        for _ in range(12):  # 3.6 s of trickling, a header byte per connection every 0.3 s
            for i, sock in enumerate(socks):
                if i not in closed:
                    try:
                        sock.sendall(b"X")
                    except OSError:
                        closed.add(i)
            time.sleep(0.3)
        assert httpx.get(f"{strict_gateway.base_url}/health", timeout=5).status_code == 200
        answers = [_read_until_closed(sock) for sock in socks]
        assert all(a.startswith(b"HTTP/1.1 408") or a == b"" for a in answers), answers[:3]
        assert sum(a.startswith(b"HTTP/1.1 408") for a in answers) >= 50
        assert time.monotonic() - started < 20
    finally:
        for sock in socks:
            sock.close()
    assert_serving(strict_gateway, hostile_redis.client, "echo-slow", echo_worker)


def test_a_body_that_never_finishes_is_a_408(strict_gateway) -> None:
    sock = _connect(strict_gateway)
    try:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b'Content-Length: 200\r\n\r\n{"model": "echo-slow", ')  # fmt: skip
        started = time.monotonic()
        answer = _read_until_closed(sock)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:200]
        assert json.loads(body)["error"]["code"] == "request_timeout"
        assert time.monotonic() - started < 10
    finally:
        sock.close()


def test_connections_beyond_the_cap_get_503_and_the_cap_frees_up(hostile_env, hostile_dir, hostile_redis,
                                                                  echo_worker) -> None:  # fmt: skip
    gateway = Gateway({**hostile_env, "QUEUECHAT_MAX_CONNECTIONS": "20"}, hostile_dir)
    socks: list[socket.socket] = []
    try:
        socks = [_connect(gateway) for _ in range(20)]  # idle: they hold a connection each
        time.sleep(0.3)
        response = httpx.get(f"{gateway.base_url}/v1/models", timeout=10)
        error = _error(response, 503)
        assert error["code"] == "too_many_connections" and response.headers["retry-after"] == "1"
        for sock in socks:
            sock.close()
        time.sleep(0.3)
        assert httpx.get(f"{gateway.base_url}/v1/models", timeout=10).status_code == 200
        assert_serving(gateway, hostile_redis.client, "echo-slow", echo_worker)
    finally:
        for sock in socks:
            sock.close()
        gateway.stop()
