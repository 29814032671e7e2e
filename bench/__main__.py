"""Benchmark: the full QueueChat stack (gateway + Redis + worker) against plain transformers.

In one run, on the same prompts (temperature 0):
  (a) baseline in-process: `generate` for one stream, and one static batch per concurrency level;
  (b) the stack started here (or --url), driven by N concurrent streaming clients (closed loop);
  (c) a table of tokens/s, TTFT and inter-token latency, with ratios against (a).
Tokens are counted by re-tokenizing the received text with the model's tokenizer.
--echo measures the relay alone: an instant model-free adapter behind one gateway.
--echo --streams N holds N concurrent streams through one gateway (bench/streams.py).
--keep also runs every level with `"store": true` (a kept job: event log + job record), alternating
with plain requests, and prints the kept/plain throughput ratio: the event log's cost.
--request-rate R sends requests open loop instead (Poisson arrivals, mixed lengths: bench/openloop.py),
with or without --echo; --sweep finds the highest rate that meets the SLO.
--structured measures the cost of grammar-constrained decoding: the same level with free replies and
with replies held to a JSON schema, alternating (bench/structured.py).
--engines compares engines on the default GGUF model: llama.cpp's own server, QueueChat on the
llama-cpp engine and QueueChat on transformers (bench/engines.py; needs `make llama-cpp`).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
from pathlib import Path

import torch
import yaml

from bench import baseline as base
from bench import openloop
from bench.load import LevelReport, percentile, run
from bench.stack import Stack
from protocol.models_file import load_models_file
from protocol.settings import DEFAULT_MODELS_FILE
from workers.settings import WorkerSettings


def _row(level: LevelReport, ratio: str) -> str:
    ms = lambda v: f"{v * 1000:7.0f}"  # noqa: E731
    return (f"| {level.concurrency:>3} | {level.requests:>4} | {level.errors:>3} | {level.tokens_per_s:8.1f} | {ratio:>7} "
            f"| {ms(percentile(level.ttfts, 50))} | {ms(percentile(level.ttfts, 95))} "
            f"| {ms(percentile(level.gaps, 50))} | {ms(percentile(level.gaps, 95))} |")  # fmt: skip


HEADER = ("| conc | reqs | err | tok/s | ratio | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | ITL p95 ms |\n"
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip


def _model_folder(model: str, models_file: Path) -> Path:
    from adapters.gguf_cache import convert_gguf

    spec = load_models_file(models_file).get(model)
    if spec is None or spec.path is None:
        raise SystemExit(f"{model} is not a model with files in {models_file}")
    return convert_gguf(spec.path, WorkerSettings().cache_dir) if spec.path.suffix == ".gguf" else spec.path


def _keep_row(c: int, plain: LevelReport, measure) -> str:
    """Plain and kept throughput at one level, alternating (the plain level just measured, then
    kept, plain, kept, plain, kept), compared by their medians.  `measure(extra)` runs the level."""
    plains, kepts = [plain.tokens_per_s], []
    for k in range(5):
        if k % 2 == 0:
            kepts.append(measure({"store": True}).tokens_per_s)
        else:
            plains.append(measure(None).tokens_per_s)
    p, q = statistics.median(plains), statistics.median(kepts)
    return f"| {c:>3} | {p:8.1f} | {q:8.1f} | {q / p:6.3f} |"


def _print_keep(rows: list[str]) -> None:
    if rows:
        print("\n### event log cost: plain vs kept (`store: true`) requests, medians of 3 alternating runs\n")
        print("| conc | plain tok/s | kept tok/s | kept/plain |\n|---:|---:|---:|---:|")
        print("\n".join(rows), flush=True)


def bench_model(args: argparse.Namespace) -> None:
    from adapters.hf_causal import pick_device, pick_dtype

    folder = _model_folder(args.model, args.models_file)
    spec = load_models_file(args.models_file).models[args.model]
    dtype = pick_dtype(spec.dtype, pick_device(spec.device))  # what the worker will use
    print(f"baseline: transformers generate in-process on {folder.name}, {dtype} ...", flush=True)
    tokenizer, model = base.load(folder, dtype)
    baseline = base.measure(tokenizer, model, args.max_tokens, [c for c in args.concurrency if c > 1])
    del model  # the worker loads its own copy; free this one before the stack starts
    fp32_16 = None  # float32's static batch of 16: the default before bf16 and 64 slots
    if dtype != torch.float32:
        tokenizer, model = base.load(folder, torch.float32)
        fp32_16 = base.measure(tokenizer, model, args.max_tokens, [16], singles=0).batch_tokens_per_s[16]
        del model
    gc.collect()
    count = lambda text: base.count_tokens(tokenizer, text)  # noqa: E731
    targets = [("queuechat", None, args.model)] + ([("compare", args.compare_url, args.compare_model)]
                                                    if args.compare_url else [])  # fmt: skip
    for label, url, model in targets:
        stack = None
        if url is None and args.url is None:
            stack = Stack(args.model, args.models_file, Path(tempfile.mkdtemp(prefix="bench-")))
            stack.wait_ready()
            url = stack.url
        url = url or args.url
        try:
            run(url, model, 2, 1, 8, count)  # warm-up
            print(f"\n### {label} at {url}, model {model}, max_tokens {args.max_tokens}\n\n{HEADER}")
            kept_rows = []
            for c in args.concurrency:
                level = run(url, model, c, args.rounds, args.max_tokens, count)
                if args.keep:
                    kept_rows.append(_keep_row(c, level, lambda extra: run(url, model, c, args.rounds,
                                                                           args.max_tokens, count, extra)))  # fmt: skip
                if c == 1:
                    overhead = (percentile(level.ttfts, 50) * 1000) - baseline.ttft_p50_ms
                    ratio = f"{level.tokens_per_s / baseline.single_tokens_per_s:.2f}x"
                    note = f"TTFT p50 overhead vs in-process prefill: {overhead:+.0f} ms"
                else:
                    ratio, note = f"{level.tokens_per_s / baseline.batch_tokens_per_s[c]:.2f}x", ""
                if fp32_16:
                    note += f" vs the float32 static batch of 16: {level.tokens_per_s / fp32_16:.2f}x"
                print(_row(level, ratio), flush=True)
                if note:
                    print(f"<!-- {note} -->", flush=True)
            _print_keep(kept_rows)
            if stack:
                rss = stack.rss()
                print(f"\nRSS after the run: gateway {rss['gateway']:.0f} MB, worker {rss['worker']:.0f} MB")
        finally:
            if stack:
                stack.stop()
    print(f"\nbaseline (in-process transformers generate, same prompts, {dtype}):")
    print(f"  one stream: {baseline.single_tokens_per_s:.1f} tok/s; prefill + first token p50 {baseline.ttft_p50_ms:.0f} ms")
    for size, tps in baseline.batch_tokens_per_s.items():
        print(f"  static batch of {size}: {tps:.1f} tok/s")
    if fp32_16:
        print(f"  float32 static batch of 16: {fp32_16:.1f} tok/s")
    print("ratio: c=1 against one stream; c>1 against the static batch of c prompts")


def bench_echo(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-echo-"))
    models_file = workdir / "models.yaml"
    models_file.write_text(yaml.safe_dump({"models": {"echo": {"adapter": "echo", "slots": max(args.concurrency)}}}))
    stack = Stack("echo", models_file, workdir)
    try:
        stack.wait_ready()
        run(stack.url, "echo", 2, 1, 8, len)
        print(f"\n### relay only: echo adapter, max_tokens {args.max_tokens}\n\n{HEADER}")
        kept_rows = []
        count = lambda t: len(t.encode())  # noqa: E731
        for c in args.concurrency:
            level = run(stack.url, "echo", c, args.rounds, args.max_tokens, count)
            print(_row(level, "-"), flush=True)
            if args.keep:
                kept_rows.append(_keep_row(c, level, lambda extra: run(stack.url, "echo", c, args.rounds,
                                                                       args.max_tokens, count, extra)))  # fmt: skip
        _print_keep(kept_rows)
        rss = stack.rss()
        print(f"\nRSS after the run: gateway {rss['gateway']:.0f} MB, worker {rss['worker']:.0f} MB")
    finally:
        stack.stop()


def bench_open(args: argparse.Namespace) -> None:
    """Open loop (bench/openloop.py) on the model (counted with its tokenizer, no in-process
    baseline) or the echo adapter (counted in bytes), on a stack started here or at --url."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-open-"))
    if args.echo:
        model, count, models_file = "echo", (lambda t: len(t.encode())), workdir / "models.yaml"
        options = {"step_delay": args.step_delay} if args.step_delay else {}
        models_file.write_text(yaml.safe_dump({"models": {"echo": {"adapter": "echo", "slots": args.slots,
                                                                    "options": options}}}))  # fmt: skip
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(_model_folder(args.model, args.models_file))
        model, count, models_file = args.model, (lambda t: base.count_tokens(tokenizer, t)), args.models_file
    stack = None if args.url else Stack(model, models_file, workdir)
    try:
        if stack:
            stack.wait_ready()
        url = args.url or stack.url
        run(url, model, 2, 1, 8, count)  # warm-up
        openloop.bench_openloop(args, url, model, count)
    finally:
        if stack:
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--models-file", type=Path, default=DEFAULT_MODELS_FILE)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="requests per client at each level")
    parser.add_argument("--url", help="an already running QueueChat /v1 URL instead of starting one")
    parser.add_argument("--compare-url", help="another OpenAI-compatible /v1 URL to measure the same way")
    parser.add_argument("--compare-model", default=None, help="model name at --compare-url")
    parser.add_argument("--dtypes", action="store_true", help="float32 vs bfloat16 in-process: speed and greedy agreement")
    parser.add_argument("--echo", action="store_true", help="relay throughput with the model-free echo adapter")
    parser.add_argument("--engines", action="store_true", help="llama.cpp's server vs QueueChat on llama-cpp and on transformers")
    parser.add_argument("--structured", action="store_true", help="free vs JSON-schema-constrained replies, alternating")
    parser.add_argument("--keep", action="store_true", help="also measure kept (store: true) requests: the event log's cost")
    parser.add_argument("--streams", type=int, help="with --echo: this many concurrent streams through one gateway")
    parser.add_argument("--workers", type=int, default=4, help="with --streams: echo workers sharing the slots")
    parser.add_argument("--step-delay", type=float, default=None,
                        help="with --echo: seconds per echo step (--streams: default 0.5; open loop: default 0)")
    parser.add_argument("--client-processes", type=int, default=2, help="with --streams: processes running clients")
    openloop.add_arguments(parser)
    args = parser.parse_args()
    args.compare_model = args.compare_model or args.model
    if args.request_rate is not None and args.request_rate <= 0:
        parser.error("--request-rate must be positive")
    if args.dtypes:
        from bench.dtypes import bench_dtypes

        sizes = [16, 64] if args.concurrency == [1, 4, 8, 16] else [c for c in args.concurrency if c > 1]
        bench_dtypes(_model_folder(args.model, args.models_file), args.max_tokens, sizes)
    elif args.engines:
        from bench.engines import bench_engines

        levels = [1, 16] if args.concurrency == [1, 4, 8, 16] else args.concurrency
        bench_engines(args.model, args.models_file, levels, args.max_tokens)
    elif args.request_rate or args.sweep:
        bench_open(args)
    elif args.structured:
        from transformers import AutoTokenizer

        from bench.structured import bench_structured

        tokenizer = AutoTokenizer.from_pretrained(_model_folder(args.model, args.models_file))
        levels = [16] if args.concurrency == [1, 4, 8, 16] else args.concurrency
        bench_structured(args.model, args.models_file, levels, args.rounds, args.max_tokens,
                         lambda text: base.count_tokens(tokenizer, text), args.url)  # fmt: skip
    elif args.echo and args.streams:
        from bench.streams import bench_streams

        step_delay = 0.5 if args.step_delay is None else args.step_delay
        bench_streams(args.streams, args.workers, step_delay, args.max_tokens, args.client_processes)
    elif args.echo:
        if args.concurrency == [1, 4, 8, 16]:
            args.concurrency = [16, 64]
        bench_echo(args)
    else:
        bench_model(args)


if __name__ == "__main__":
    main()
