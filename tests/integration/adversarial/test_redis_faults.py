"""Redis failing under requests, on a redis-server of this module's own: writes refused for want of
memory, the connection cut as a task is sent, a restart under open streams.  Each request that
fails gets a 503 `queue_unavailable`, and nothing stays behind: no subscription, no socket, no
busy slot."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from protocol import KEY_PREFIX
from tests.integration.adversarial.conftest import assert_serving, sdk
from tests.integration.adversarial.redis_proxy import FaultyRedisProxy
from tests.integration.processes import Gateway, RedisServer, eventually, live_worker, stack_env

LONG = [{"role": "user", "content": "a long echo, please"}]


@pytest.fixture(scope="module")
def fragile(tmp_path_factory: pytest.TempPathFactory, hostile_models: Path) -> Iterator[dict]:
    """redis-server, an echo worker straight on it, a gateway that reaches it through a proxy."""
    workdir = tmp_path_factory.mktemp("redis-faults")
    redis = RedisServer(workdir)
    proxy = FaultyRedisProxy(redis.port)
    env = stack_env(redis.url, hostile_models, QUEUECHAT_KEEPALIVE_INTERVAL="0.5")
    state: dict = {"redis": redis, "proxy": proxy, "workdir": workdir}
    try:
        with live_worker(["echo-slow"], env, workdir, redis.client) as worker:
            state.update(worker=worker, gateway=Gateway({**env, "QUEUECHAT_REDIS_URL": proxy.url}, workdir))
            yield state
    finally:
        if "gateway" in state:
            state["gateway"].stop()
        proxy.close()
        state["redis"].stop()  # the one running now: a test may have restarted it


def _channels(redis: RedisServer) -> list[bytes]:
    return redis.client.pubsub_channels(f"{KEY_PREFIX}events:*")


def _queue_unavailable(gateway: Gateway) -> None:
    body = {"model": "echo-slow", "messages": LONG, "max_tokens": 3}
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "queue_unavailable"


def test_a_full_redis_fails_requests_with_503_and_leaves_no_subscription(fragile) -> None:
    """With every write refused (out of memory), closing a stream cannot write its cancel key,
    nor can new requests queue their task or write theirs: the subscriptions must go anyway
    (they once stayed, one per request, and the abandoned stream kept its slot)."""
    redis, gateway, worker = fragile["redis"], fragile["gateway"], fragile["worker"]
    stream = sdk(gateway).chat.completions.create(model="echo-slow", messages=LONG, max_tokens=2000, stream=True)
    next(stream), next(stream)
    redis.client.config_set("maxmemory", 1)  # reads and pub/sub go on
    try:
        stream.close()
        time.sleep(1)
    finally:
        redis.client.config_set("maxmemory", 0)
    assert eventually(lambda: not _channels(redis), 10), _channels(redis)
    redis.client.config_set("maxmemory", 1)
    try:
        for _ in range(5):
            _queue_unavailable(gateway)
    finally:
        redis.client.config_set("maxmemory", 0)
    assert eventually(lambda: not _channels(redis), 10), _channels(redis)
    assert_serving(gateway, redis.client, "echo-slow", worker)


def test_redis_failing_while_the_task_is_sent_is_a_503(fragile) -> None:
    """Subscribing works, then the connection sending the task is cut: kombu gives up with its own
    OperationalError (it once was a 500)."""
    redis, proxy, gateway, worker = fragile["redis"], fragile["proxy"], fragile["gateway"], fragile["worker"]
    proxy.refused = frozenset({"LPUSH"})
    try:
        _queue_unavailable(gateway)
        assert proxy.cut >= 1
    finally:
        proxy.refused = frozenset()
    assert eventually(lambda: not _channels(redis), 10), _channels(redis)
    assert_serving(gateway, redis.client, "echo-slow", worker)


def _close_wait(gateway: Gateway, port: int) -> int:
    connections = psutil.Process(gateway.popen.pid).net_connections(kind="tcp")
    return sum(1 for c in connections if c.status == psutil.CONN_CLOSE_WAIT and c.raddr and c.raddr.port == port)


def test_a_redis_restart_under_open_streams_leaves_no_socket_behind(fragile) -> None:
    """Each stream ends with an error, and the gateway closes every socket of its own: the
    subscriptions' and the idle ones in its pool.  Only kombu's remain in CLOSE_WAIT, at most two
    while Redis is down and one after (its producer keeps its old channel's socket)."""
    redis, proxy, gateway, worker = fragile["redis"], fragile["proxy"], fragile["gateway"], fragile["worker"]
    client = sdk(gateway, timeout=30)
    streams = [client.chat.completions.create(model="echo-slow", messages=LONG, max_tokens=2000, stream=True)
               for _ in range(4)]  # fmt: skip  (echo-slow has 4 slots)
    for stream in streams:
        next(stream)
    redis.stop()
    for stream in streams:
        with pytest.raises(openai.APIError):  # each ends with an error, none hangs
            for _ in stream:
                pass
    assert eventually(lambda: _close_wait(gateway, proxy.port) <= 2, 3), _close_wait(gateway, proxy.port)
    fragile["redis"] = redis = RedisServer(fragile["workdir"], port=redis.port)
    assert eventually(lambda: _answers(client), 60), "the service did not come back"
    assert eventually(lambda: _close_wait(gateway, proxy.port) <= 1, 10), _close_wait(gateway, proxy.port)
    assert_serving(gateway, redis.client, "echo-slow", worker)


def _answers(client: openai.OpenAI) -> bool:
    try:
        return bool(client.chat.completions.create(model="echo-slow", messages=LONG, max_tokens=2).choices)
    except openai.APIError:
        time.sleep(0.5)
        return False
