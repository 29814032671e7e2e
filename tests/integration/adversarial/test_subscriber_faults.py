"""The gateway's one subscriber connection (gateway/subscriber.py) against a real redis-server:
cut under open streams, shared by many streams, and a client that stops reading.

Echo models answer with their prompt's bytes over and over, one byte a token, so every stream's
exact text is known in advance: (prompt * n)[:max_tokens]."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import openai
import psutil
import pytest

from protocol import KEY_PREFIX, slots_key
from tests.integration.adversarial.conftest import assert_serving, sdk
from tests.integration.processes import Gateway, RedisServer, eventually, live_worker, stack_env
from tests.tiny_models import write_models_file

MODELS = {
    "echo-slow": {"adapter": "echo", "slots": 4, "options": {"step_delay": 0.05}},  # 20 tokens a second
    "echo-wide": {"adapter": "echo", "slots": 32, "options": {"step_delay": 0.05}},
    "echo-fast": {"adapter": "echo", "slots": 2, "max_context": 300_000},  # thousands of tokens a second
}
POOL = 6  # the gateway's redis_max_connections (its default)
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"  # no two positions alike: a lost or doubled chunk shows


def echo(prompt: str, max_tokens: int) -> str:
    return (prompt * (max_tokens // len(prompt) + 1))[:max_tokens]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """redis-server, one worker for the echo models, a gateway with the default settings."""
    workdir = tmp_path_factory.mktemp("subscriber-faults")
    models = write_models_file(workdir / "models.yaml", MODELS)
    redis = RedisServer(workdir)
    env = stack_env(redis.url, models, QUEUECHAT_KEEPALIVE_INTERVAL="0.5")
    state: dict = {"redis": redis, "env": env, "workdir": workdir}
    try:
        with live_worker(list(MODELS), env, workdir, redis.client) as worker:
            state.update(worker=worker, gateway=Gateway(env, workdir))
            yield state
    finally:
        if "gateway" in state:
            state["gateway"].stop()
        redis.stop()


def _channels(redis: RedisServer) -> list[bytes]:
    return redis.client.pubsub_channels(f"{KEY_PREFIX}events:*")


def _redis_sockets(gateway: Gateway, redis: RedisServer) -> list[psutil._common.pconn]:
    """The gateway process's open TCP connections to Redis."""
    return [c for c in psutil.Process(gateway.popen.pid).net_connections(kind="tcp")
            if c.raddr and c.raddr.port == redis.port and c.status == psutil.CONN_ESTABLISHED]  # fmt: skip


def _subscribers(gateway: Gateway, redis: RedisServer) -> list[dict]:
    """The gateway's clients that Redis sees in pub/sub mode (CLIENT LIST flag P)."""
    ports = {c.laddr.port for c in _redis_sockets(gateway, redis)}
    return [c for c in redis.client.client_list()
            if int(c["addr"].rsplit(":", 1)[1]) in ports and "P" in c["flags"]]  # fmt: skip


class Reader(threading.Thread):
    """Reads one streamed chat completion to its end: its text, finish reason, or the error."""

    def __init__(self, open_stream: Callable[[], openai.Stream]) -> None:
        super().__init__(daemon=True)  # one that hangs must not hold up the test run's exit
        self._open = open_stream
        self.text = ""
        self.finish: str | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            for chunk in self._open():
                for choice in chunk.choices:
                    self.text += choice.delta.content or ""
                    self.finish = choice.finish_reason or self.finish
        except Exception as exc:  # noqa: BLE001  (the test looks at it)
            self.error = exc

    def finished(self, timeout: float) -> bool:
        self.join(timeout)
        return not self.is_alive()


def _stream(client: openai.OpenAI, model: str, prompt: str, max_tokens: int, **extra: object) -> Reader:
    def open_stream() -> openai.Stream:
        messages = [{"role": "user", "content": prompt}]
        return client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                              stream=True, **extra)  # fmt: skip

    reader = Reader(open_stream)
    reader.start()
    return reader


def test_a_cut_subscriber_connection_fails_plain_streams_and_kept_ones_fill_the_gap(stack) -> None:
    """CLIENT KILL of the gateway's pub/sub connection alone, under two streams: the plain one
    ends at once with queue_unavailable (its lost events are gone), the kept one reads what it
    missed from its event log and ends with its whole text, each chunk once; then the gateway is
    back to one subscriber connection and nothing stays subscribed."""
    redis, gateway, worker = stack["redis"], stack["gateway"], stack["worker"]
    client = sdk(gateway, timeout=30)
    kept_prompt, plain_prompt, max_tokens = ALPHABET, ALPHABET[::-1], 150  # 7.5 s each
    kept = _stream(client, "echo-slow", kept_prompt, max_tokens, extra_body={"store": True})
    plain = _stream(client, "echo-slow", plain_prompt, max_tokens)
    assert eventually(lambda: len(kept.text) >= 10 and len(plain.text) >= 10, 30), (kept.text, plain.error)
    [subscriber] = _subscribers(gateway, redis)  # one connection for both streams
    assert int(subscriber["sub"]) == 2, subscriber

    assert redis.client.client_kill_filter(_type="pubsub", addr=subscriber["addr"]) == 1
    assert plain.finished(30) and kept.finished(30), "a stream hung after the cut"

    assert isinstance(plain.error, openai.APIError), (plain.error, plain.text)
    assert plain.error.code == "queue_unavailable", plain.error
    assert echo(plain_prompt, max_tokens).startswith(plain.text) and len(plain.text) < max_tokens
    assert kept.error is None, kept.error
    assert kept.text == echo(kept_prompt, max_tokens) and kept.finish == "length", kept.text

    assert eventually(lambda: not _channels(redis), 10), _channels(redis)
    after = _stream(client, "echo-slow", "after the cut ", 60)
    assert eventually(lambda: len(after.text) >= 5, 30), after.error
    [again] = _subscribers(gateway, redis)  # a new connection, the only one again
    assert again["id"] != subscriber["id"] and int(again["sub"]) == 1, again
    assert after.finished(30) and after.error is None, after.error
    assert after.text == echo("after the cut ", 60)
    assert eventually(lambda: not _channels(redis), 10), _channels(redis)
    assert_serving(gateway, redis.client, "echo-slow", worker)


def test_many_streams_share_a_few_connections_to_redis(stack) -> None:
    """30 streams at once, each subscribed to its own channel: the gateway's sockets to Redis stay
    within its pool (one of them the subscriber) plus Celery's, not one per stream, and each
    stream still gets its own text, whole."""
    redis, gateway, worker = stack["redis"], stack["gateway"], stack["worker"]
    client = sdk(gateway, timeout=60)
    prompts = [f"stream {i:02d} says hello; " for i in range(30)]
    max_tokens = 60  # 3 s each, all at once (32 slots)
    readers = [_stream(client, "echo-wide", prompt, max_tokens) for prompt in prompts]
    peak_sockets = peak_channels = peak_subscribers = 0
    deadline = time.monotonic() + 60
    while any(r.is_alive() for r in readers) and time.monotonic() < deadline:
        peak_sockets = max(peak_sockets, len(_redis_sockets(gateway, redis)))
        peak_channels = max(peak_channels, len(_channels(redis)))
        peak_subscribers = max(peak_subscribers, len(_subscribers(gateway, redis)))
        time.sleep(0.05)
    assert all(r.finished(5) for r in readers), "streams still running after 60 s"
    for reader, prompt in zip(readers, prompts):
        assert reader.error is None, reader.error
        assert reader.text == echo(prompt, max_tokens) and reader.finish == "length", (prompt, reader.text)
    assert peak_channels >= 25, f"only {peak_channels} streams were open together: nothing was shown"
    assert peak_subscribers == 1, peak_subscribers
    assert peak_sockets <= POOL + 3, f"{peak_sockets} connections to Redis for {peak_channels} streams"
    assert eventually(lambda: not _channels(redis), 10), _channels(redis)
    assert_serving(gateway, redis.client, "echo-wide", worker)


def _request(port: int, body: dict) -> socket.socket:
    """A streamed POST on a raw socket with a small receive buffer, its answer left unread."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))  # fmt: skip
    return sock


def _read_to_end(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    received = bytearray()
    deadline = time.monotonic() + timeout
    while b"data: [DONE]" not in received[-4096:] and time.monotonic() < deadline:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        received += chunk
    return bytes(received)


def _busy(redis: RedisServer, model: str) -> int:
    slots = [v.decode().split("/") for v in redis.client.hgetall(slots_key(model)).values()]
    return sum(int(total) - int(free) for free, total in slots)


def test_a_client_that_stops_reading_is_cut_off_and_its_job_stopped(stack) -> None:
    """A client that stops reading a fast stream: once the socket buffers are full, the events
    wait in its inbox, and past QUEUECHAT_STREAM_BUFFER_BYTES the stream is stopped: the gateway
    stops listening, so the worker stops the job and frees its slot while the client still does
    not read (the job alone would go on for a minute or more); when the client reads again, what
    was sent ends with a client_too_slow error."""
    redis, worker = stack["redis"], stack["worker"]
    env = {**stack["env"], "QUEUECHAT_STREAM_BUFFER_BYTES": "4096", "QUEUECHAT_MAX_TOKENS_LIMIT": "200000"}
    gateway = Gateway(env, stack["workdir"])
    sock = None
    try:
        assert _busy(redis, "echo-fast") == 0
        body = {"model": "echo-fast", "stream": True, "max_tokens": 200_000,
                "messages": [{"role": "user", "content": ALPHABET * 5}]}  # fmt: skip
        sock = _request(gateway.port, body)
        assert eventually(lambda: len(_channels(redis)) == 1 and _busy(redis, "echo-fast") == 1, 30)
        [channel] = _channels(redis)
        request_id = channel.decode().removeprefix(f"{KEY_PREFIX}events:")
        # a few MB fill the sockets' buffers, then 4 KB the inbox: seconds at this model's speed
        assert eventually(lambda: _busy(redis, "echo-fast") == 0, 40), "the unread job still holds its slot"
        assert not _channels(redis)
        assert f"request {request_id} has no listener left" in worker.log_tail(200_000)

        received = _read_to_end(sock, 30)
        events = [json.loads(line[len(b"data: "):]) for line in received.split(b"\n")
                  if line.startswith(b"data: {")]  # fmt: skip
        assert b"data: [DONE]" in received[-200:], received[-600:]
        assert events and events[-1].get("error", {}).get("code") == "client_too_slow", received[-600:]
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e.get("choices"))
        assert len(text) > 4096 and echo(ALPHABET * 5, len(text)) == text  # what was sent came in order
        assert_serving(gateway, redis.client, "echo-fast", worker)
    finally:
        if sock is not None:
            sock.close()
        gateway.stop()
