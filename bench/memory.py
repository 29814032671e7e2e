"""Worker memory against prompt length: is it bounded by configuration, not by the prompt?

    python -m bench.memory                         # SmolLM2, prompts of 4,096 tokens
    python -m bench.memory --prompt-tokens 1200 --prompts 3

Starts its own stack (Redis, one worker, the gateway), warms the worker up with a short request,
reads its idle RSS, then sends `--prompts` different long completion prompts (random words,
`max_tokens` 1) one after another and reads the RSS after each (and the peak, VmHWM).  A request's
own KV cache is its tokens times the bytes a token takes in the model's cache (from the worker's
heartbeat).  It passes when RSS after each prompt stays within 1.5 x idle RSS + the KV the worker
keeps on purpose: the first prompt's own, then what the prefix cache holds (bounded by
`prefix_cache_mb`; try --prefix-cache-mb 256 to watch the bound hold).
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis
import yaml

from bench.stack import Stack, rss_mb
from protocol import stats_key
from protocol.settings import DEFAULT_MODELS_FILE

_WORDS = ("river stone light paper market window garden silver engine winter orange letter planet music "
          "forest bridge coffee mountain signal harbor lantern meadow copper thunder violet canyon").split()  # fmt: skip


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def long_prompt(words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) + rng.choice(["", "s", "ed", "ing"]) for _ in range(words))


def worker_stats(stack: Stack) -> dict:
    client = redis.Redis.from_url(stack.redis_url)
    raw = client.hgetall(stats_key(stack.model))
    return json.loads(next(iter(raw.values()))) if raw else {}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--models-file", type=Path, default=DEFAULT_MODELS_FILE)
    parser.add_argument("--prompt-tokens", type=int, default=4096, help="about this many tokens per prompt")
    parser.add_argument("--prompts", type=int, default=2, help="how many different long prompts, one after another")
    parser.add_argument("--prefix-cache-mb", type=float, help="the model's prefix cache bound (default: its own)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    models_file = args.models_file
    if args.prefix_cache_mb is not None:
        raw = yaml.safe_load(models_file.read_text())
        entry = {**raw["models"][args.model], "prefix_cache_mb": args.prefix_cache_mb}
        entry["path"] = str((models_file.parent / entry["path"]).resolve())
        models_file = workdir / "models.yaml"
        models_file.write_text(yaml.safe_dump({"models": {args.model: entry}}))
    stack = Stack(args.model, models_file, workdir)
    try:
        stack.wait_ready()
        client = httpx.Client(base_url=stack.url, timeout=600)
        client.post("/completions", json={"model": args.model, "prompt": "Hello", "max_tokens": 4}).raise_for_status()
        time.sleep(2)  # a heartbeat with the stats
        pid = stack.procs["worker"].pid
        idle = rss_mb(pid)
        per_token = worker_stats(stack).get("kv_bytes_per_token")
        print(f"worker idle RSS {idle:.0f} MB (peak so far {peak_mb(pid):.0f} MB); "
              f"KV cache per token: {per_token if per_token else 'unknown'} bytes", flush=True)  # fmt: skip
        ok = True
        for i in range(args.prompts):
            body = {"model": args.model, "prompt": long_prompt(int(args.prompt_tokens * 0.64), seed=i), "max_tokens": 1}
            started = time.monotonic()
            reply = client.post("/completions", json=body)
            took = time.monotonic() - started
            if reply.status_code != 200:
                print(f"prompt {i + 1}: HTTP {reply.status_code} {reply.text[:300]}")
                ok = False
                continue
            tokens = reply.json()["usage"]["total_tokens"]
            time.sleep(2)
            after, stats = rss_mb(pid), worker_stats(stack)
            own_kv = tokens * per_token / 2**20 if per_token else 0.0
            cached = stats.get("prefix_cache_bytes", 0) / 2**20
            kept = max(own_kv if i == 0 else 0.0, cached)  # the KV the worker still holds on purpose
            bound = 1.5 * idle + kept
            ok &= after <= bound
            print(f"prompt {i + 1}: {tokens} tokens in {took:.1f} s; RSS after {after:.0f} MB (+{after - idle:.0f}), "
                  f"peak {peak_mb(pid):.0f} MB; its KV {own_kv:.0f} MB; prefix cache holds {cached:.0f} MB; "
                  f"bound 1.5 x idle + KV kept = {bound:.0f} MB: {'ok' if after <= bound else 'OVER'}", flush=True)  # fmt: skip
        return 0 if ok else 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
