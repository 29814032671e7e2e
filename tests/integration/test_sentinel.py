"""Redis Sentinel end to end: a gateway and an echo worker told where Redis is only through the
Sentinel settings (their redis_url points at nothing), under closed-loop load from openai SDK
clients, while the master is SIGKILLed.  Service must resume on the promoted replica without
restarting any QueueChat process, within 30 s; every request cut by the failover ends cleanly
(an OpenAI-shaped 5xx, or an error event in the stream: never a hang, never a torn stream); and
after recovery, requests succeed again, every one of them."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from protocol.redis_clients import sync_client
from queuechat.launcher import redis_settings
from tests.integration.processes import BIN, Flower, Gateway, Worker, stack_env, wait_for
from tests.integration.sentinel_nodes import UNREACHABLE_URL, SentinelGroup
from tests.tiny_models import write_models_file

CONTENT = "through the sentinels"
STREAM_TOKENS, SHORT_TOKENS = 30, 5  # echo-slow: 50 ms a token, so a stream lasts 1.5 s
CLIENTS = 4
RECOVERY_LIMIT = 30.0


@dataclass
class Outcome:
    kind: str  # "stream" or "short"
    started: float
    ended: float
    result: str  # "ok", "clean: ..." (an OpenAI-shaped error) or anything else (a failure of the test)


def expected(tokens: int) -> str:
    return (CONTENT * 4)[:tokens]  # echo repeats the conversation's text


def one_request(client: openai.OpenAI, kind: str) -> Outcome:
    started = time.monotonic()
    messages = [{"role": "user", "content": CONTENT}]
    tokens = STREAM_TOKENS if kind == "stream" else SHORT_TOKENS
    try:
        if kind == "stream":
            stream = client.chat.completions.create(model="echo-slow", messages=messages, max_tokens=tokens,
                                                    stream=True)  # fmt: skip
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        else:
            text = client.chat.completions.create(model="echo-slow", messages=messages,
                                                  max_tokens=tokens).choices[0].message.content  # fmt: skip
        result = "ok" if text == expected(tokens) else f"wrong or torn text {text!r}"
    except openai.APIStatusError as exc:  # before the first byte: a status and an OpenAI error body
        body = exc.body if isinstance(exc.body, dict) else {}
        shaped = exc.status_code >= 500 and body.get("message") and body.get("type")
        unshaped = f"unshaped: {exc.status_code} {exc.response.text[:300]!r}"
        result = f"clean: {exc.status_code} {body.get('code')}" if shaped else unshaped
    except (openai.APITimeoutError, openai.APIConnectionError) as exc:
        result = f"hang or cut: {type(exc).__name__}: {exc}"
    except openai.APIError as exc:  # an error event in the stream (the SDK raises it, body = the error object)
        body = exc.body if isinstance(exc.body, dict) else {}
        result = f"clean: stream error {body.get('code')}" if body.get("message") else f"unshaped event {exc.body!r}"
    except Exception as exc:  # noqa: BLE001 - whatever it is, the test reports it
        result = f"unexpected {type(exc).__name__}: {exc}"
    return Outcome(kind, started, time.monotonic(), result)


class Load:
    """CLIENTS threads, each sending one request after another (streams and short ones by turns)
    until stopped; a failed request is followed by a 0.2 s pause, not a tight loop."""

    def __init__(self, base_url: str) -> None:
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._base_url = base_url
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def _run(self, index: int) -> None:
        # Client timeouts bound every request: a hang shows up as APITimeoutError, not a stuck test.
        client = openai.OpenAI(base_url=self._base_url, api_key="unused", max_retries=0, timeout=15)
        turn = index
        while not self._stop.is_set():
            outcome = one_request(client, "stream" if turn % 2 == 0 else "short")
            turn += 1
            with self._lock:
                self.outcomes.append(outcome)
            if outcome.result != "ok":
                self._stop.wait(0.2)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)  # each request is bounded by the client's 15 s timeout
        assert not any(thread.is_alive() for thread in self._threads), "a load client hung"


@pytest.fixture
def sentinel_stack(tmp_path: Path) -> Iterator[tuple[SentinelGroup, Worker, Gateway]]:
    echo_slow = {"adapter": "echo", "slots": 4, "options": {"step_delay": 0.05}}  # 50 ms a token
    models = write_models_file(tmp_path / "models.yaml", {"echo-slow": echo_slow})
    worker = gateway = None
    with SentinelGroup(tmp_path) as group:
        env = stack_env(UNREACHABLE_URL, models, **group.env())
        try:
            worker = Worker(["echo-slow"], env, tmp_path)
            worker.wait_live(timeout=120)  # reads the heartbeat through the Sentinels too (the launcher's check)
            gateway = Gateway(env, tmp_path)
            yield group, worker, gateway
        finally:
            if gateway is not None:
                gateway.stop()
            if worker is not None:
                worker.stop()


def test_service_moves_to_the_promoted_replica_without_restarting_anything(sentinel_stack, tmp_path: Path) -> None:
    group, worker, gateway = sentinel_stack
    pids = (worker.pid, gateway.pid)
    base_url = f"{gateway.base_url}/v1"
    with Load(base_url) as load:
        deadline = time.monotonic() + 30
        while sum(o.result == "ok" for o in load.snapshot()) < 2 * CLIENTS and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sum(o.result == "ok" for o in load.snapshot()) >= 2 * CLIENTS, _report(load.snapshot(), worker, gateway)

        killed = time.monotonic()
        group.master.stop(signal.SIGKILL)
        recovered = None
        while recovered is None and time.monotonic() < killed + RECOVERY_LIMIT:
            after = [o.ended for o in load.snapshot() if o.started > killed and o.result == "ok"]
            recovered = min(after) if after else None
            time.sleep(0.1)
        time.sleep(2)  # a little more load on the new master before the clients stop
    outcomes = load.outcomes
    report = _report(outcomes, worker, gateway)
    assert recovered is not None, f"no request succeeded within {RECOVERY_LIMIT} s of the kill\n{report}"
    cut = [o for o in outcomes if o.started < killed < o.ended]
    print(f"\n[sentinel] failover: first successful request {recovered - killed:.2f} s after SIGKILL of the master "
          f"(promotion by the Sentinels included); in flight at the kill: {_counts(cut)}; "
          f"all: {_counts(outcomes)}")  # fmt: skip
    assert all(o.result == "ok" or o.result.startswith("clean: ") for o in outcomes), report
    assert all(o.result == "ok" for o in outcomes if o.started < killed - 0.1 and o.ended < killed), report

    group.wait_promoted(timeout=10)  # the gateway and the worker followed the Sentinels, not redis_url
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=15)
    after_recovery = [one_request(client, "stream" if i % 5 == 0 else "short") for i in range(20)]
    assert all(o.result == "ok" for o in after_recovery), _report(after_recovery, worker, gateway)
    assert httpx.get(f"{gateway.base_url}/health", timeout=5).status_code == 200
    assert (worker.popen.poll(), gateway.popen.poll()) == (None, None) and (worker.pid, gateway.pid) == pids
    assert "Unrecoverable error" not in worker.log_tail(200_000)
    master = sync_client(redis_settings(worker.env or {}))  # what the worker uses: the replica, now master
    try:
        assert master.connection_pool.get_master_address()[1] == group.replica.port
    finally:
        master.close()
    # One Sentinel down as well: the first listed, the only one Flower's own client would ask.
    group.sentinels[0].stop(signal.SIGKILL)
    _the_other_processes_find_the_new_master(worker, tmp_path)


def _the_other_processes_find_the_new_master(worker: Worker, workdir: Path) -> None:
    """`queuechat models` sees the live worker, Flower's broker view counts the queue: both
    through the Sentinels (their redis_url reaches nothing)."""
    env = worker.env or {}
    listing = subprocess.run([str(BIN / "queuechat"), "models"], env=env, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and worker.node_name in listing.stdout, listing.stdout + listing.stderr
    flower = Flower(env, workdir)
    try:
        def counted() -> bool:
            queues = httpx.get(f"{flower.base_url}/api/queues/length", timeout=5).json()["active_queues"]
            return any(queue["name"] == "echo-slow" for queue in queues)

        wait_for(counted, "Flower to count the echo-slow queue through the Sentinels", 60, flower)
    finally:
        flower.stop()


def _counts(outcomes: list[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        key = f"{outcome.kind} {outcome.result if not outcome.result.startswith('wrong') else 'wrong text'}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def _report(outcomes: list[Outcome], worker: Worker, gateway: Gateway) -> str:
    bad = [o for o in outcomes if o.result != "ok"][:20]
    return (f"{_counts(outcomes)}\nfirst failures: {bad}\n--- worker log ---\n{worker.log_tail(4000)}"
            f"\n--- gateway log ---\n{gateway.log_tail(4000)}")  # fmt: skip
