"""Many concurrent streams through one gateway: `python -m bench --echo --streams 2000`.

The echo adapter with a step delay stands in for a model that emits one token per stream per
step, on as many workers as asked (their slots add up to the number of streams).  N streaming
clients, spread over a few client processes, each hold one request open from the start; while
they run, a sampler reads the gateway process's TCP connections to Redis and its RSS.

Reported: streams that completed, errors, the peak number of open streams, the gateway's peak
Redis connections and RSS, and inter-token gaps.  The "added" delay of a gap is the gap minus
its stream's own mean gap (the worker's step period under this load): what the relay (and the
client) add on top of the model's pace; its p99 is the figure to hold under 50 ms.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import yaml

from bench.load import percentile
from bench.stack import Stack


@dataclass
class StreamResults:
    completed: int = 0
    errors: list[str] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)  # seconds between content chunks
    added: list[float] = field(default_factory=list)  # each gap minus its stream's mean gap
    peak_open: int = 0


async def _stream(client: httpx.AsyncClient, url: str, i: int, max_tokens: int, results: StreamResults,
                  opened: list[int]) -> None:  # fmt: skip
    body = {"model": "echo", "stream": True, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": f"stream {i:05d} " + "abcdefghij" * 20}]}  # fmt: skip
    times: list[float] = []
    try:
        async with client.stream("POST", f"{url}/chat/completions", json=body) as response:
            if response.status_code != 200:
                results.errors.append(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
                return
            opened[0] += 1
            results.peak_open = max(results.peak_open, opened[0])
            try:
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        results.errors.append(chunk["error"].get("code") or "error")
                        return
                    if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        times.append(time.perf_counter())
            finally:
                opened[0] -= 1
    except httpx.HTTPError as exc:
        results.errors.append(type(exc).__name__)
        return
    gaps = [b - a for a, b in zip(times, times[1:])]
    if gaps:
        mean = statistics.fmean(gaps)
        results.gaps.extend(gaps)
        results.added.extend(g - mean for g in gaps)
    results.completed += 1


async def _clients(url: str, first: int, count: int, max_tokens: int, ramp: float) -> StreamResults:
    results, opened = StreamResults(), [0]
    limits = httpx.Limits(max_connections=count + 8, max_keepalive_connections=count + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300, connect=60), limits=limits) as client:

        async def one(k: int) -> None:
            await asyncio.sleep(ramp * k / count)  # a connection storm measures the accept queue, not the relay
            await _stream(client, url, first + k, max_tokens, results, opened)

        await asyncio.gather(*(one(k) for k in range(count)))
    return results


def _client_process(url: str, first: int, count: int, max_tokens: int, ramp: float, out: multiprocessing.Queue) -> None:
    out.put(asyncio.run(_clients(url, first, count, max_tokens, ramp)))


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system + times.children_user + times.children_system


class Sampler(threading.Thread):
    """Peaks of the gateway's connections to Redis and of its RSS, sampled every 0.2 s."""

    def __init__(self, pid: int, redis_port: int) -> None:
        super().__init__(daemon=True)
        self.process, self.redis_port = psutil.Process(pid), redis_port
        self.peak_connections, self.peak_rss_mb = 0, 0.0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.2):
            try:
                connections = self.process.net_connections(kind="tcp")
                rss = self.process.memory_info().rss / 2**20
            except psutil.Error:
                return
            to_redis = sum(1 for c in connections if c.raddr and c.raddr.port == self.redis_port
                           and c.status == psutil.CONN_ESTABLISHED)  # fmt: skip
            self.peak_connections = max(self.peak_connections, to_redis)
            self.peak_rss_mb = max(self.peak_rss_mb, rss)

    def stop(self) -> None:
        self._done.set()
        self.join()


def bench_streams(streams: int, workers: int, step_delay: float, max_tokens: int, client_processes: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    models_file = workdir / "models.yaml"
    slots = math.ceil(streams / workers)
    spec = {"adapter": "echo", "slots": slots, "options": {"step_delay": step_delay}}
    models_file.write_text(yaml.safe_dump({"models": {"echo": spec}}))
    env = {"QUEUECHAT_MAX_QUEUE": str(streams), "QUEUECHAT_MAX_CONNECTIONS": str(streams + 64)}
    stack = Stack("echo", models_file, workdir, env, workers=workers)
    try:
        stack.wait_ready()
        gateway = stack.procs["gateway"]
        redis_port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0])
        asyncio.run(_clients(stack.url, 0, 4, 4, 0.0))  # warm-up
        sampler = Sampler(gateway.pid, redis_port)
        sampler.start()
        parts_of = {"gateway": [gateway], "redis": [stack.procs["redis"]], "workers": stack.workers}
        cpu_before = {name: sum(_cpu(p.pid) for p in procs) for name, procs in parts_of.items()}
        started = time.perf_counter()
        out: multiprocessing.Queue = multiprocessing.Queue()
        share = [streams // client_processes + (k < streams % client_processes) for k in range(client_processes)]
        ramp = min(10.0, streams / 200)
        procs = [multiprocessing.Process(target=_client_process,
                                         args=(stack.url, sum(share[:k]), share[k], max_tokens, ramp, out))
                 for k in range(client_processes)]  # fmt: skip
        for proc in procs:
            proc.start()
        parts = [out.get(timeout=900) for _ in procs]
        for proc in procs:
            proc.join()
        seconds = time.perf_counter() - started
        cpu = {name: sum(_cpu(p.pid) for p in procs) - cpu_before[name] for name, procs in parts_of.items()}
        sampler.stop()
    finally:
        stack.stop()
    total = StreamResults(sum(p.completed for p in parts), [e for p in parts for e in p.errors],
                          [g for p in parts for g in p.gaps], [a for p in parts for a in p.added],
                          sum(p.peak_open for p in parts))  # fmt: skip
    ms = lambda values, q: f"{percentile(values, q) * 1000:.0f}"  # noqa: E731
    print(f"\n### {streams} concurrent streams through one gateway: echo, step delay {step_delay * 1000:.0f} ms, "
          f"{max_tokens} tokens each, {workers} worker(s) of {slots} slots\n")  # fmt: skip
    print("| figure | value | target |\n|---|---:|---:|")
    print(f"| streams completed / errors | {total.completed} / {len(total.errors)} | {streams} / 0 |")
    print(f"| peak streams open at once (sum over client processes) | {total.peak_open} | {streams} |")
    print(f"| gateway's peak Redis connections | {sampler.peak_connections} | ≤ 8 |")
    print(f"| gateway's peak RSS | {sampler.peak_rss_mb:.0f} MB | ≤ 300 MB |")
    print(f"| inter-token gap p50 / p99 | {ms(total.gaps, 50)} / {ms(total.gaps, 99)} ms | |")
    print(f"| added delay (gap − its stream's mean gap) p50 / p99 | {ms(total.added, 50)} / {ms(total.added, 99)} ms "
          f"| p99 ≤ 50 ms |")  # fmt: skip
    print(f"| wall time; CPU time of gateway, redis, workers | {seconds:.1f} s; "
          f"{cpu['gateway']:.1f} s, {cpu['redis']:.1f} s, {cpu['workers']:.1f} s | |")
    if total.errors:
        print("\nerrors (first 5):", total.errors[:5])
