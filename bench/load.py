"""Closed-loop streaming clients against an OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from tqdm import tqdm

from bench.prompts import messages


@dataclass
class Result:
    ttft: float  # seconds from sending to the first content
    gaps: list[float]  # seconds between content chunks
    text: str


@dataclass
class LevelReport:
    concurrency: int
    requests: int
    seconds: float
    tokens: int
    errors: int
    ttfts: list[float] = field(default_factory=list)
    first_error: str | None = None
    gaps: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


async def _one(client: httpx.AsyncClient, url: str, model: str, i: int, max_tokens: int,
               extra: dict | None = None) -> Result:  # fmt: skip
    body = {"model": model, "messages": messages(i), "stream": True, "temperature": 0, "max_tokens": max_tokens,
            **(extra or {})}  # fmt: skip
    return await stream_chat(client, url, body)


async def stream_chat(client: httpx.AsyncClient, url: str, body: dict) -> Result:
    """One streaming chat completion: the time to its first content, the gaps between content
    chunks and the text (httpx.HTTPError or RuntimeError when it fails)."""
    started = time.perf_counter()
    first, last, gaps, parts = None, None, [], []
    async with client.stream("POST", f"{url}/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            content = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
            if not content:
                continue
            now = time.perf_counter()
            if first is None:
                first = now
            else:
                gaps.append(now - last)
            last = now
            parts.append(content)
    return Result((first or time.perf_counter()) - started, gaps, "".join(parts))


async def run_level(url: str, model: str, concurrency: int, rounds: int, max_tokens: int,
                    count: Callable[[str], int], extra: dict | None = None, keepalive: bool = True) -> LevelReport:  # fmt: skip
    """`keepalive` False: a new connection per request (llama.cpp's server closes kept-alive
    connections after a few requests, and one reused just as it closes fails the request)."""
    report = LevelReport(concurrency, concurrency * rounds, 0.0, 0, 0)
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=None if keepalive else 0)
    progress = tqdm(total=report.requests, desc=f"{concurrency} clients", unit="req", leave=False, file=sys.stderr)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker(k: int) -> None:
            for r in range(rounds):
                try:
                    result = await _one(client, url, model, k + r * concurrency, max_tokens, extra)
                except (httpx.HTTPError, RuntimeError) as exc:
                    report.errors += 1
                    report.first_error = report.first_error or f"{type(exc).__name__}: {exc}"
                    progress.update()
                    continue
                progress.update()
                report.ttfts.append(result.ttft)
                report.gaps.extend(result.gaps)
                report.tokens += count(result.text)

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        report.seconds = time.perf_counter() - started
    progress.close()
    return report


def run(url: str, model: str, concurrency: int, rounds: int, max_tokens: int, count, extra: dict | None = None,
        keepalive: bool = True) -> LevelReport:  # fmt: skip
    """One closed-loop level; `extra` fields go into every request body (e.g. {"store": True})."""
    return asyncio.run(run_level(url, model, concurrency, rounds, max_tokens, count, extra, keepalive))
