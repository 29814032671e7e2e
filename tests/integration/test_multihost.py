"""QueueChat across "hosts": one Linux network namespace each, on a private LAN (tests/integration/netns.py).

Redis (with a password, bound to its own address only), two gateways and three workers, each in a
namespace of its own: every process reaches Redis over a veth link and a bridge, never loopback.
The test's clients sit in the root namespace, on the same LAN.  The model is an echo with a
step delay (SLOTS requests decoded together, STEP seconds a token), so throughput is bounded by
the workers' slots, and each reply says which prompt it answers.

Scenarios, under closed-loop load through both gateways: throughput with 1 worker, then 3; then
(a) a worker SIGKILLed, (b) a gateway SIGKILLed, (c) a new worker and a new gateway.  Each
request completes, or gets a clean OpenAI error (or a connection error, only from the killed
gateway); none hangs; none is generated twice; the new worker takes work within seconds.
Figures are printed (`pytest -s`).
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from protocol import live_workers_key, slots_key
from protocol.settings import QueueSettings
from queuechat.launcher import GatewayProcess, RedisServer, WorkerProcess, stack_env
from tests.integration import netns
from tests.integration.closed_loop import Load, openai_shaped
from tests.integration.processes import eventually, pause_queue, wait_for
from tests.tiny_models import write_models_file

pytestmark = [pytest.mark.netns, pytest.mark.timeout(420)]

MODEL, SLOTS, STEP, MAX_TOKENS = "echo-lan", 4, 0.1, 10  # about 1 s a request, 4 at a time per worker
CLIENTS = 20  # enough to keep 3 workers' 12 slots busy
TIMEOUT = 30.0  # each HTTP attempt; the gateways give up on a queued request after QUEUE_TIMEOUT
QUEUE_TIMEOUT = 20
BOUND = 45.0  # no request, retries included, may take longer
PICKUP = 10.0  # a new worker's first task within this many seconds of its first heartbeat
RECEIVED = re.compile(r"Task queuechat\.generate\[([^\]]+)\] received")


def say(line: str) -> None:
    print(f"[multihost] {line}", flush=True)


class Cluster:
    """The processes, each in its host's namespace; stopped (SIGTERM, then SIGKILL) by `close`."""

    def __init__(self, lan: netns.Lan, workdir: Path) -> None:
        self.lan, self.workdir = lan, workdir
        self.workers: dict[str, WorkerProcess] = {}
        self.gateways: dict[str, GatewayProcess] = {}
        self.redis: RedisServer | None = None
        address = lan.add("redis")
        self.redis = RedisServer(6379, workdir=workdir, log_path=workdir / "redis.log", bind=address,
                                 password=secrets.token_hex(12), prefix=lan.prefix("redis"))
        self.redis.ready()
        models = write_models_file(workdir / "models.yaml", {
            MODEL: {"adapter": "echo", "slots": SLOTS, "options": {"step_delay": STEP}}})  # fmt: skip
        self.env = stack_env(self.redis.url, models, QUEUECHAT_QUEUE_TIMEOUT=str(QUEUE_TIMEOUT))
        self.client = self.redis.client

    def worker(self, host: str) -> WorkerProcess:
        self.lan.add(host)
        name = f"{host}@{self.lan.tag}"
        log = self.workdir / f"{host}.log"
        self.workers[host] = WorkerProcess([MODEL], self.env, name=name, log_path=log,
                                           prefix=self.lan.prefix(host))  # fmt: skip
        return self.workers[host]

    def gateway(self, host: str) -> GatewayProcess:
        address = self.lan.add(host)
        log = self.workdir / f"{host}.log"
        self.gateways[host] = GatewayProcess(self.env, port=8000, host=address, log_level="info",
                                             log_path=log, prefix=self.lan.prefix(host))  # fmt: skip
        return self.gateways[host]

    def peers(self) -> set[str]:
        """The addresses Redis sees its clients connect from."""
        return {c["addr"].rsplit(":", 1)[0] for c in self.client.client_list()}

    def received(self) -> Counter[str]:
        """How many times any worker took each task (its id), from the workers' logs."""
        return Counter(m for w in self.workers.values() for m in RECEIVED.findall(w.log_tail(10**8)))

    def close(self) -> None:
        for proc in [*self.gateways.values(), *self.workers.values(), self.redis]:
            if proc is not None:
                proc.stop(timeout=10)


class TaskEvents:
    """Celery's task events (task-received, task-started), as Redis carries them to Flower."""

    def __init__(self, url: str) -> None:
        import celery

        self.app = celery.Celery("multihost-events", set_as_current=False)
        self.app.conf.update(QueueSettings(redis_url=url).celery_conf())
        self.events: list[dict] = []
        self._receiver = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._capture, daemon=True, name="task-events")
        self._thread.start()
        assert self._ready.wait(10), "could not listen to task events"

    def _capture(self) -> None:
        with self.app.connection_for_read() as connection:
            self._receiver = self.app.events.Receiver(connection, handlers={
                "task-received": self.events.append, "task-started": self.events.append})  # fmt: skip
            self._receiver.on_consume_ready = lambda *_, **__: self._ready.set()
            self._receiver.capture(limit=None, timeout=None, wakeup=False)  # until should_stop (every 1 s)

    def count(self, kind: str) -> Counter[str]:
        return Counter(e["uuid"] for e in list(self.events) if e["type"] == kind)

    def started_on(self, hostname: str) -> list[float]:
        """When each task that `hostname` started was seen starting (this machine's clock)."""
        return [e["local_received"] for e in list(self.events) if e["type"] == "task-started"
                and e["hostname"] == hostname]  # fmt: skip

    def close(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(5)
        self.app.close()


@pytest.fixture(scope="module")
def lan() -> Iterator[netns.Lan]:
    if why := netns.capable():
        pytest.skip(why)
    if swept := netns.sweep():
        say(f"removed leftovers of an earlier run: {swept}")
    network = netns.Lan()
    try:
        yield network
    finally:
        network.close()


@pytest.fixture(scope="module")
def cluster(lan: netns.Lan, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("multihost")
    stack = None
    try:
        stack = Cluster(lan, workdir)
        starting = [stack.worker(f"w{i}") for i in (1, 2, 3)] + [stack.gateway(f"gw{i}") for i in (1, 2)]
        for proc in starting:
            proc.wait_ready(150, watch=starting)
        yield stack
    finally:
        if stack is not None:
            stack.close()


@pytest.fixture(scope="module")
def events(cluster: Cluster) -> Iterator[TaskEvents]:
    watcher = TaskEvents(cluster.redis.url)
    try:
        yield watcher
    finally:
        watcher.close()


def load(cluster: Cluster, hosts: list[str], seconds: float, phase: str) -> Load:
    gateways = [cluster.gateways[h].base_url for h in hosts]
    return Load(gateways, MODEL, MAX_TOKENS, clients=CLIENTS, per_client=1000, deadline=seconds,
                timeout=TIMEOUT, phase=phase).start()  # fmt: skip


def consume(control: Any, cluster: Cluster, hosts: tuple[str, ...]) -> list:
    """Make these workers take tasks again (Celery's add_consumer); their replies."""
    names = [cluster.workers[h].name for h in hosts]
    return control.add_consumer(MODEL, destination=names, reply=True, timeout=5)


def test_every_process_reaches_redis_over_the_lan_with_its_password(cluster: Cluster, lan: netns.Lan) -> None:
    expected = {lan.hosts[h] for h in ("w1", "w2", "w3", "gw1", "gw2")}
    for proc in cluster.gateways.values():  # a gateway connects to Redis lazily
        assert httpx.get(f"{proc.base_url}/v1/models", timeout=10).status_code == 200
    assert eventually(lambda: expected <= cluster.peers(), 10), cluster.peers()
    peers = cluster.peers()
    say(f"Redis {cluster.redis.url.split('@')[1]} sees clients from {sorted(peers)}")
    assert peers <= {str(a) for a in lan.subnet.hosts()}, f"a client off the LAN: {peers}"
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=lan.hosts["redis"], port=6379, socket_timeout=5).ping()


def test_throughput_grows_with_workers(cluster: Cluster, events: TaskEvents) -> None:
    """The same closed loop, with one worker consuming and then three: completions per second."""
    control = events.app.control
    for host in ("w2", "w3"):
        pause_queue(control, MODEL, cluster.workers[host].name)
    driver = load(cluster, ["gw1", "gw2"], 90, "1 worker")
    rates = {}
    try:
        for workers in (1, 3):
            if workers == 3:
                assert len(consume(control, cluster, ("w2", "w3"))) == 2
                driver.mark("3 workers")
            time.sleep(4.0)  # the queue fills (1 worker) or drains to its new level (3)
            start = time.monotonic()
            time.sleep(10.0)
            end = time.monotonic()
            rates[workers] = driver.completions_between(start, end) / (end - start)
    finally:
        stuck = driver.stop(BOUND)
        consume(control, cluster, ("w2", "w3"))
    for phase, calls in driver.by_phase().items():
        say(f"throughput phase {phase!r}: {Load.summary(calls)}")
    say(f"throughput: 1 worker {rates[1]:.2f} req/s ({rates[1] * MAX_TOKENS:.1f} tok/s), 3 workers "
        f"{rates[3]:.2f} req/s ({rates[3] * MAX_TOKENS:.1f} tok/s): x{rates[3] / rates[1]:.2f}")
    assert not stuck, f"clients still waiting after {BOUND} s: {stuck}"
    bad = [c for c in driver.done() if c.outcome != "ok"]
    assert not bad, f"{len(bad)} requests failed without any fault: {bad[:3]}"
    assert rates[3] >= 2.5 * rates[1], rates


def test_faults_under_load(cluster: Cluster, events: TaskEvents, lan: netns.Lan) -> None:
    """(a) SIGKILL a worker, (b) SIGKILL a gateway, (c) start a new worker and a new gateway."""
    driver = load(cluster, ["gw1", "gw2"], 150, "3 workers, 2 gateways")
    w1, gw1 = cluster.workers["w1"], cluster.gateways["gw1"]
    w1_log_from = w1.log_path.stat().st_size  # what w1 takes from now on
    at: dict[str, float] = {}
    try:
        time.sleep(4)
        assert cluster.client.hget(slots_key(MODEL), w1.name) != f"{SLOTS}/{SLOTS}".encode(), "w1 is idle"
        w1.stop(signal.SIGKILL)
        at["w1 killed"] = driver.mark("a: worker w1 killed")
        time.sleep(8)
        gw1.stop(signal.SIGKILL)
        at["gw1 killed"] = driver.mark("b: gateway gw1 killed")
        time.sleep(6)
        at["launch"] = driver.mark("c: new worker w4 and gateway gw3")
        w4, gw3 = cluster.worker("w4"), cluster.gateway("gw3")

        def first_beat() -> float:  # its score: Redis' clock, in seconds since the epoch
            return at.setdefault("w4 beat", float(cluster.client.zscore(live_workers_key(MODEL), w4.name)))

        wait_for(first_beat, "w4's first heartbeat", 150, w4, every=0.05)
        at["w4 live"] = time.monotonic()
        gw3.wait_ready(150)
        at["gw3 ready"] = time.monotonic()
        driver.add_gateway(gw3.base_url)
        assert eventually(lambda: events.started_on(w4.name), PICKUP + 5), "w4 started nothing"
        assert eventually(lambda: any(c.outcome == "ok" and c.attempts[-1][0] == gw3.base_url
                                      for c in driver.done()), 20), "gw3 served nothing"  # fmt: skip
        time.sleep(3)
    finally:
        stuck = driver.stop(BOUND)
    calls, phases = driver.done(), driver.by_phase()
    for phase, in_phase in phases.items():
        say(f"phase {phase!r}: {Load.summary(in_phase)}")
    errors = Counter((e.status, e.body["error"].get("code") if openai_shaped(e.body) else repr(e.body)[:80])
                     for e in driver.http_errors)  # fmt: skip
    say(f"HTTP error responses (every SDK attempt, retried or not): {dict(errors)}")
    pickup = min(events.started_on(w4.name)) - at["w4 beat"]
    say(f"new worker w4: live {at['w4 live'] - at['launch']:.1f} s after its launch (gw3 ready after "
        f"{at['gw3 ready'] - at['launch']:.1f} s); its first task started {pickup:.2f} s after its first "
        f"heartbeat; {len(events.started_on(w4.name))} tasks in all")
    lost_errors = [e.at - at["w1 killed"] for e in driver.http_errors
                   if openai_shaped(e.body) and e.body["error"].get("code") == "worker_lost"]  # fmt: skip
    orphans = sum(w.log_tail(10**8).count("no listener left") for w in cluster.workers.values())
    span = f"{min(lost_errors, default=0):.1f}-{max(lost_errors, default=0):.1f}"
    say(f"w1's requests got 503 worker_lost {span} s after its SIGKILL; workers stopped {orphans} requests "
        "of the killed gateway gw1")

    # every request completes or ends in a clean OpenAI error, within the bound
    assert not stuck, f"clients still waiting after {BOUND} s: {stuck}"
    assert max(c.seconds for c in calls) < BOUND
    assert not [c for c in calls if c.outcome in ("timeout", "wrong")], "a hung or wrong reply"
    assert all(openai_shaped(e.body) for e in driver.http_errors), [e.body for e in driver.http_errors]
    assert all(openai_shaped(json.loads(c.detail.split(" ", 1)[1])) for c in calls if c.outcome == "status")
    assert not [c for c in phases["3 workers, 2 gateways"] if c.outcome != "ok"]
    assert any(c.outcome == "ok" for c in phases["c: new worker w4 and gateway gw3"])
    # connection errors: only from gw1, once it was killed, for requests sent before clients knew
    refused = [(g, when, c.started) for c in calls for g, what, when in c.attempts if what == "connection"]
    assert refused and all(g == gw1.base_url and when >= at["gw1 killed"] for g, when, _ in refused), refused
    known_down = driver.down[gw1.base_url]
    assert all(started <= known_down for _, _, started in refused), "sent to a gateway known to be down"
    assert not [c for c in calls if c.outcome == "connection"], "a request found no gateway at all"

    # at most once: no task taken twice (workers' logs), received or started twice (Celery's events)
    taken = cluster.received()
    assert taken and max(taken.values()) == 1, [t for t, n in taken.items() if n > 1]
    for kind in ("task-received", "task-started"):
        seen = events.count(kind)
        assert seen and max(seen.values()) == 1, (kind, [t for t, n in seen.items() if n > 1])
    done_ids = [c.response_id for c in calls if c.outcome == "ok"]
    assert len(done_ids) == len(set(done_ids)) and all(taken[i] == 1 for i in done_ids)
    # the killed worker had requests in flight; none was run again elsewhere (above), each got a
    # clean 503 within seconds (one taken but not yet started when w1 died would wait for the
    # gateway's queue timeout instead, or end with gw1: rare, and still a clean outcome)
    on_w1 = set(RECEIVED.findall(w1.log_path.read_bytes()[w1_log_from:].decode(errors="replace")))
    lost = on_w1 - set(done_ids)
    say(f"w1 took {len(on_w1)} tasks; {len(lost)} of them never completed (in flight when it was killed)")
    assert lost, "w1 was killed with nothing in flight"
    assert 1 <= len(lost_errors) <= len(lost) and max(lost_errors) < 10, (lost_errors, len(lost))

    assert pickup <= PICKUP, pickup
    assert {lan.hosts["w4"], lan.hosts["gw3"]} <= cluster.peers()
