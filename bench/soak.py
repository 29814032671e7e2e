"""Soak: mixed traffic against the full stack for N minutes, then a leak report.

    python -m bench.soak --minutes 10              # echo model (relay, queue, cancellation paths)
    python -m bench.soak --minutes 30 --model smollm2-135m

Clients loop over a mix of requests: chat and completions, streamed and not, streams abandoned
after two chunks, bad requests (400), an unknown model (404) and bursts beyond a small backlog
limit (429).  Every `--sample` seconds it records the gateway's and worker's RSS, threads and
open files, and Redis' clients, memory and keys.  At the end it checks that nothing is left:
no subscriptions, no key without an expiry outside the registry, empty queues, all slots free,
no 5xx.  Exit status 1 when any check fails or RSS grew more than --max-growth-mb after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
import yaml

from bench.prompts import messages
from bench.stack import Stack
from protocol import KEY_PREFIX, PERMANENT_KEY_PREFIXES, slots_key
from protocol.settings import DEFAULT_MODELS_FILE

_EXPECTED = {"200", "400", "404", "429", "abandoned"}


@dataclass
class Sample:
    t: float
    procs: dict[str, dict[str, float]]  # gateway/worker -> rss_mb, threads, fds
    redis: dict[str, float]


def _proc(pid: int) -> dict[str, float]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"rss_mb": int(status["VmRSS"].split()[0]) / 1024, "threads": int(status["Threads"]),
            "fds": len(list(Path(f"/proc/{pid}/fd").iterdir()))}  # fmt: skip


def _sample(stack: Stack, client: redis.Redis, started: float) -> Sample:
    info = client.info()
    return Sample(
        time.monotonic() - started,
        {name: _proc(stack.procs[name].pid) for name in ("gateway", "worker")},
        {"clients": info["connected_clients"], "used_mb": info["used_memory"] / 2**20, "keys": client.dbsize()},
    )


class Traffic:
    def __init__(self, url: str, model: str, max_tokens: int, burst: int) -> None:
        self.url, self.model, self.max_tokens, self.burst = url, model, max_tokens, burst
        self.outcomes: Counter[str] = Counter()

    async def loop(self, http: httpx.AsyncClient, seed: int, until: float) -> None:
        rng = random.Random(seed)
        kinds = ["chat_stream", "chat", "completion_stream", "completion", "abandon", "bad", "unknown", "burst"]
        weights = [30, 20, 10, 10, 15, 5, 5, 2]
        i = seed
        while time.monotonic() < until:
            kind = rng.choices(kinds, weights)[0]
            i += 1
            try:
                if kind == "burst":
                    results = await asyncio.gather(*(self._plain(http, "chat", i + k) for k in range(self.burst)))
                    self.outcomes.update(f"burst {code}" for code in results)
                else:
                    self.outcomes[f"{kind} {await self._one(http, kind, i)}"] += 1
            except httpx.HTTPError as exc:
                self.outcomes[f"{kind} {type(exc).__name__}"] += 1

    def _body(self, kind: str, i: int, stream: bool) -> tuple[str, dict]:
        tokens = random.Random(i).randint(1, self.max_tokens)
        if kind.startswith("completion"):
            return "completions", {"model": self.model, "prompt": messages(i)[0]["content"], "max_tokens": tokens,
                                   "stream": stream}  # fmt: skip
        return "chat/completions", {"model": self.model, "messages": messages(i), "max_tokens": tokens,
                                    "stream": stream}  # fmt: skip

    async def _plain(self, http: httpx.AsyncClient, kind: str, i: int) -> int:
        path, body = self._body(kind, i, stream=False)
        response = await http.post(f"{self.url}/{path}", json=body)
        return response.status_code

    async def _one(self, http: httpx.AsyncClient, kind: str, i: int) -> str:
        if kind in ("chat", "completion"):
            return str(await self._plain(http, kind, i))
        if kind == "bad":
            response = await http.post(f"{self.url}/chat/completions", json={"model": self.model, "messages": []})
            return str(response.status_code)
        if kind == "unknown":
            response = await http.post(f"{self.url}/chat/completions",
                                       json={"model": "no-such-model", "messages": messages(i)})  # fmt: skip
            return str(response.status_code)
        path, body = self._body(kind.replace("abandon", "chat_stream"), i, stream=True)
        async with http.stream("POST", f"{self.url}/{path}", json=body) as response:
            if response.status_code != 200:
                return str(response.status_code)
            chunks = 0
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                if "error" in json.loads(line[6:]):
                    return "stream-error"
                chunks += 1
                if kind == "abandon" and chunks == 2:
                    return "abandoned"  # leaving the block closes the connection mid-stream
            return "200"


def _leftovers(client: redis.Redis, model: str) -> list[str]:
    problems = []
    if channels := client.pubsub_channels(f"{KEY_PREFIX}events:*"):
        problems.append(f"{len(channels)} pub/sub channels still subscribed")
    forever = [k for k in client.scan_iter(count=1000) if not k.decode().startswith(PERMANENT_KEY_PREFIXES) and client.ttl(k) == -1]
    if forever:
        problems.append(f"{len(forever)} keys without an expiry, e.g. {forever[:5]}")
    if waiting := client.llen(model):
        problems.append(f"{waiting} tasks still queued")
    slots = {k.decode(): v.decode() for k, v in client.hgetall(slots_key(model)).items()}
    if not slots or any(free != total for free, total in (v.split("/") for v in slots.values())):
        problems.append(f"slots not all free: {slots}")
    return problems


def _growth(samples: list[Sample], proc: str, key: str, warm: float) -> tuple[float, float, float]:
    """(value after warm-up, last value, least-squares slope per hour over the post-warm-up samples)."""
    points = [(s.t, s.procs[proc][key]) for s in samples if s.t >= warm] or [(samples[-1].t, samples[-1].procs[proc][key])]
    n = len(points)
    mean_t, mean_v = sum(t for t, _ in points) / n, sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in points) / var * 3600 if var else 0.0
    return points[0][1], points[-1][1], slope


async def _drive(traffic: Traffic, clients: int, seconds: float, stack: Stack, client: redis.Redis,
                 every: float) -> tuple[list[Sample], float]:  # fmt: skip
    started = time.monotonic()
    samples = [_sample(stack, client, started)]
    # keep-alive shorter than uvicorn's 5 s, or a reused connection can race the server closing it
    limits = httpx.Limits(max_connections=clients * (traffic.burst + 1), keepalive_expiry=2.0)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        until = started + seconds
        loops = [asyncio.create_task(traffic.loop(http, k * 7919, until)) for k in range(clients)]
        while not all(task.done() for task in loops):
            await asyncio.wait(loops, timeout=every)
            samples.append(_sample(stack, client, started))
            done = sum(traffic.outcomes.values())
            print(f"  {samples[-1].t:6.0f} s  {done:6d} requests  gateway {samples[-1].procs['gateway']['rss_mb']:.0f} MB"
                  f"  worker {samples[-1].procs['worker']['rss_mb']:.0f} MB", flush=True)  # fmt: skip
        for task in loops:
            task.result()
    return samples, started


def _models_file(args: argparse.Namespace, workdir: Path) -> Path:
    if args.model != "echo":
        return args.models_file
    path = workdir / "models.yaml"
    spec = {"adapter": "echo", "slots": 16, "options": {"step_delay": 0.005}}
    path.write_text(yaml.safe_dump({"models": {"echo": spec}}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--model", default="echo", help="'echo' (model-free) or a model of --models-file")
    parser.add_argument("--models-file", type=Path, default=DEFAULT_MODELS_FILE)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--max-queue", type=int, default=16, help="the gateway's backlog limit, so bursts get 429")
    parser.add_argument("--sample", type=float, default=30, help="seconds between resource samples")
    parser.add_argument("--max-growth-mb", type=float, default=50, help="fail beyond this RSS growth after warm-up")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    stack = Stack(args.model, _models_file(args, workdir), workdir, env={"QUEUECHAT_MAX_QUEUE": str(args.max_queue)})
    try:
        stack.wait_ready()
        client = redis.Redis.from_url(stack.redis_url)
        traffic = Traffic(stack.url, args.model, args.max_tokens, burst=args.max_queue * 2)
        seconds = args.minutes * 60
        print(f"soak: {args.minutes:g} min, {args.clients} clients, model {args.model}, logs in {workdir}", flush=True)
        samples, started = asyncio.run(_drive(traffic, args.clients, seconds, stack, client, args.sample))
        time.sleep(5)  # let cancellations and heartbeats settle
        samples.append(_sample(stack, client, started))
        failed = _report(samples, traffic.outcomes, _leftovers(client, args.model), seconds * 0.2, args.max_growth_mb)
    finally:
        stack.stop()
    raise SystemExit(1 if failed else 0)


def _report(samples: list[Sample], outcomes: Counter[str], problems: list[str], warm: float, max_growth: float) -> bool:
    print("\noutcomes (kind status: count):")
    for key, count in sorted(outcomes.items()):
        print(f"  {key:28s} {count:7d}")
    unexpected = sum(c for k, c in outcomes.items() if k.split()[-1] not in _EXPECTED)
    print(f"\nresources (first sample after {warm:.0f} s warm-up -> end; slope over that span):")
    failed = bool(problems) or unexpected > 0
    for proc in ("gateway", "worker"):
        for key in ("rss_mb", "threads", "fds"):
            first, last, slope = _growth(samples, proc, key, warm)
            print(f"  {proc:8s} {key:7s} {first:8.1f} -> {last:8.1f}   ({slope:+.1f}/hour)")
            if key == "rss_mb" and last - first > max_growth:
                failed = True
                problems.append(f"{proc} RSS grew {last - first:.0f} MB after warm-up")
    r0, r1 = samples[0].redis, samples[-1].redis
    print(f"  redis    clients {r0['clients']:.0f} -> {r1['clients']:.0f}, memory {r0['used_mb']:.1f} -> {r1['used_mb']:.1f} MB,"
          f" keys {r0['keys']:.0f} -> {r1['keys']:.0f}")  # fmt: skip
    print(f"\nunexpected outcomes (5xx, errors inside a stream, transport errors): {unexpected}")
    for problem in problems:
        print(f"LEAK: {problem}")
    print("result:", "FAILED" if failed else "clean")
    return failed


if __name__ == "__main__":
    main()
