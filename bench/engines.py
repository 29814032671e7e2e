"""`python -m bench --engines`: the default GGUF model on every engine, in one run, on the same chat
prompts (greedy), tokens counted with one tokenizer:

  llama.cpp's own server      started here with the flags the llama-cpp engine gives its sidecar;
  QueueChat + llama-cpp        the whole stack (gateway, Redis, Celery worker owning its llama-server);
  QueueChat + transformers     the whole stack with the in-process engine.

llama.cpp's server and QueueChat + llama-cpp run side by side and are measured in turns (order
swapped each repetition, medians of `repeats`), so drift on a shared machine hits both; the
transformers stack runs afterwards, alone.  Ratios: QueueChat + llama-cpp against llama.cpp's
server (throughput), and the difference in median time to first token (the stack's overhead).
"""

from __future__ import annotations

import math
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench import baseline as base
from bench.load import LevelReport, percentile, run
from bench.stack import Stack
from protocol.models_file import load_models_file
from workers.engine_kinds import SIDECARS, find_llama_server
from workers.settings import WorkerSettings
from workers.sidecar import Sidecar

DIRECT = "llama.cpp server (its default threads)"
SAME_FLAGS = "llama.cpp server (the engine's flags)"
OURS = "QueueChat + llama-cpp"


@dataclass
class Measured:
    tokens_per_s: float
    ttft_p50_ms: float
    errors: int
    first_error: str | None = None


def _measure(url: str, model: str, c: int, rounds: int, max_tokens: int, count) -> LevelReport:
    return run(url, model, c, rounds, max_tokens, count, keepalive=False)  # the same client for every server


def _summary(levels: list[LevelReport]) -> Measured:
    ttfts = [t for level in levels for t in level.ttfts]
    return Measured(statistics.median(level.tokens_per_s for level in levels), percentile(ttfts, 50) * 1000,
                    sum(level.errors for level in levels), next((lv.first_error for lv in levels if lv.first_error), None))  # fmt: skip


def bench_engines(model: str, models_file: Path, levels: list[int], max_tokens: int, repeats: int = 3) -> None:
    spec = load_models_file(models_file).models[model]
    if spec.path is None or spec.path.suffix != ".gguf":
        raise SystemExit(f"{model} is not a GGUF model: llama.cpp runs GGUF files")
    cache_dir = WorkerSettings().cache_dir
    binary = find_llama_server(cache_dir)
    if binary is None:
        raise SystemExit("llama.cpp's server is not built: run `make llama-cpp` first")
    from transformers import AutoTokenizer

    from adapters.hf_prompts import _gguf_prompting_folder

    tokenizer = AutoTokenizer.from_pretrained(_gguf_prompting_folder(spec.path, cache_dir))
    count = lambda text: base.count_tokens(tokenizer, text)  # noqa: E731
    slots = max(levels)
    workdir = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    entry = {**yaml.safe_load(models_file.read_text())["models"][model], "path": str(spec.path), "slots": slots}
    llama_file = workdir / "models-llama-cpp.yaml"
    llama_file.write_text(yaml.safe_dump({"models": {model: {**entry, "engine": "llama-cpp"}}}))
    plain_file = workdir / "models-transformers.yaml"
    plain_file.write_text(yaml.safe_dump({"models": {model: {**entry, "engine": "transformers"}}}))
    kind = SIDECARS["llama-cpp"]
    sized = spec.model_copy(update={"slots": slots, "engine": "llama-cpp"})
    context = spec.max_context or 8192
    flags = lambda port: kind.command(sized, port, context, cache_dir, binary)  # noqa: E731  # the engine's own
    own = lambda port: _without_threads(flags(port))  # noqa: E731  # llama.cpp's default threads
    servers = {DIRECT: Sidecar(DIRECT, own), SAME_FLAGS: Sidecar(SAME_FLAGS, flags)}
    results: dict[str, dict[int, Measured]] = {DIRECT: {}, SAME_FLAGS: {}, OURS: {}}
    print(f"llama.cpp server: {binary}; {slots} slots; max_tokens {max_tokens}; medians of {repeats} turns\n"
          f"the engine's flags: {' '.join(flags(0)[1:])}", flush=True)  # fmt: skip
    stack = Stack(model, llama_file, workdir / "llama-cpp", env={"QUEUECHAT_LLAMA_SERVER": str(binary)})
    try:
        for server in servers.values():
            server.start()
        stack.wait_ready()
        urls = {**{name: f"{server.url}/v1" for name, server in servers.items()}, OURS: stack.url}
        for url in urls.values():
            run(url, model, 2, 1, 8, count)  # warm-up
        for c in levels:
            rounds = max(2, math.ceil(16 / c))
            runs: dict[str, list[LevelReport]] = {name: [] for name in urls}
            for k in range(repeats):
                for name in (list(urls)[k % 3:] + list(urls)[: k % 3]):  # each goes first once in three
                    runs[name].append(_measure(urls[name], model, c, rounds, max_tokens, count))
            for name in urls:
                results[name][c] = _summary(runs[name])
            print(f"  {c} clients: " + "; ".join(f"{n} {results[n][c].tokens_per_s:.1f} tok/s" for n in urls), flush=True)
    finally:
        stack.stop()
        for server in servers.values():
            server.close()
    plain = Stack(model, plain_file, workdir / "transformers")
    try:
        plain.wait_ready()
        run(plain.url, model, 2, 1, 8, count)
        results["QueueChat + transformers"] = {
            c: _summary([_measure(plain.url, model, c, max(2, math.ceil(16 / c)), max_tokens, count)]) for c in levels
        }
    finally:
        plain.stop()
    _print_table(results, levels)


def _print_table(results: dict[str, dict[int, Measured]], levels: list[int]) -> None:
    head = "| engine | " + " | ".join(f"{c} client{'s' * (c > 1)} tok/s | TTFT p50 ms" for c in levels) + " |"
    print("\n" + head + "\n|---|" + "---:|---:|" * len(levels))
    for name, by_level in results.items():
        cells = " | ".join(f"{by_level[c].tokens_per_s:.1f} | {by_level[c].ttft_p50_ms:.0f}" for c in levels)
        errors = sum(m.errors for m in by_level.values())
        first = next((m.first_error for m in by_level.values() if m.first_error), None)
        print(f"| {name} | {cells} |" + (f" ({errors} errors; first: {first})" if errors else ""))
    ours = results[OURS]
    for baseline in (DIRECT, SAME_FLAGS):
        theirs = results[baseline]
        for c in levels:
            print(f"{OURS} at {c} client{'s' * (c > 1)} vs {baseline}: {ours[c].tokens_per_s / theirs[c].tokens_per_s:.2f}x "
                  f"throughput, TTFT p50 {ours[c].ttft_p50_ms - theirs[c].ttft_p50_ms:+.0f} ms")  # fmt: skip


def _without_threads(argv: list[str]) -> list[str]:
    """`argv` without the thread flags (and their values) the engine adds."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--threads", "--threads-batch"):
            skip = True
        else:
            kept.append(arg)
    return kept
