"""What converting a ChatGLM checkpoint buys: batched decoding against one request at a time.

    python -m bench.chatglm_paths                       # CPU, a small random ChatGLM3-shaped model
    python -m bench.chatglm_paths --device cuda --hidden 1024 --layers 8 --requests 16
    python -m bench.chatglm_paths --checkpoint DIR --requests 8 --max-tokens 64

Without --checkpoint: writes a random checkpoint in THUDM's remote-code format (tests/tiny_thudm.py,
sizes from the flags), converts it with adapters/glm_convert.py, loads the result with the
hf-causal adapter and sends the same greedy chat requests twice to one BatchEngine: all at once
(one batch), then one after another (the same network and KV cache, so only the batching differs).

With --checkpoint DIR (a THUDM checkpoint with its own remote code, e.g. ChatGLM3-6B as
published): measures both serving paths on the same weights.  (1) DIR is loaded by the `chatglm`
adapter (THUDM's code + adapters/chatglm_compat/) and the requests go one after another through
a SerialEngine, i.e. the model's own `stream_chat`; (2) DIR is converted into a temp folder, loaded
by the hf-causal adapter and the same requests go all at once to a BatchEngine(slots=requests).
Tokens are the model's decoding steps (path 1: counted forward calls, since stream_chat yields
text; path 2: the engine's usage).  Also says whether the greedy texts agree.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def _concurrently(fn: Any, items: list[Any]) -> float:
    threads = [threading.Thread(target=fn, args=(item,)) for item in items]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def _row(label: str, tokens: int, seconds: float) -> float:
    rate = tokens / seconds
    print(f"{label:<34}: {tokens:5d} tokens in {seconds:7.2f} s = {rate:8.1f} tok/s")
    return rate


def synthetic(args: argparse.Namespace) -> None:
    from adapters.glm_convert import convert_checkpoint
    from adapters.hf_causal import HfCausalAdapter
    from protocol import ChatMessage, SamplingParams
    from protocol.models_file import ModelSpec
    from tests.engines import generate
    from tests.tiny_thudm import make_tiny_thudm
    from workers.batch_engine import BatchEngine

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        head_dim = args.hidden // args.heads
        src = make_tiny_thudm(root / "src", args.family, shards=1, hidden_size=args.hidden,
                              ffn_hidden_size=args.hidden * 8 // 3 // 8 * 8, num_layers=args.layers,
                              num_attention_heads=args.heads, kv_channels=head_dim, seq_length=4096)  # fmt: skip
        convert_checkpoint(src, root / "dst")
        spec = ModelSpec(name="glm-bench", path=root / "dst", device=args.device, dtype=args.dtype,
                         slots=args.requests, prefix_cache=False)  # fmt: skip
        adapter = HfCausalAdapter(spec, root / "cache")
        adapter.load()
        adapter._eos_ids = frozenset()  # a random model: decode exactly max_tokens in both paths
        engine = BatchEngine(adapter, slots=args.requests)
        params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
        asks = [[ChatMessage(role="user", content=question(i))] for i in range(args.requests)]
        prompts = [adapter.chat_prompt(m) for m in asks]
        tokens: list[int] = []

        def run(ids: list[int]) -> None:
            *_, finished = generate(engine, ids, params)
            tokens.append(finished.usage.completion_tokens)

        try:
            run(prompts[0])  # warm-up
            tokens.clear()
            started = time.perf_counter()
            for ids in prompts:
                run(ids)
            serial_s, serial_tokens = time.perf_counter() - started, sum(tokens)
            tokens.clear()
            batched_s = _concurrently(run, prompts)
            batched_tokens = sum(tokens)
        finally:
            engine.close()

    print(f"model: {args.family}-shaped, hidden {args.hidden}, {args.layers} layers, {args.heads} heads; "
          f"{args.device} {args.dtype}; {args.requests} requests x {args.max_tokens} tokens, greedy")  # fmt: skip
    serial = _row("one at a time", serial_tokens, serial_s)
    batched = _row("batched", batched_tokens, batched_s)
    print(f"{'speed-up':<34}: {batched / serial:.2f}x")


def question(i: int) -> str:
    return f"Question {i}: what is {i} + {i}?"


def checkpoint(args: argparse.Namespace) -> None:
    from adapters.chatglm import ChatGLMAdapter
    from adapters.glm_convert import convert_checkpoint
    from adapters.hf_causal import HfCausalAdapter
    from protocol import ChatMessage, GenerateJob, SamplingParams
    from protocol.models_file import ModelSpec
    from tests.engines import QueueSink, generate
    from workers.batch_engine import BatchEngine
    from workers.contract import Finished
    from workers.serial_engine import SerialEngine

    src, n = Path(args.checkpoint), args.requests
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    messages = [(ChatMessage(role="user", content=question(i)),) for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # (1) as published: remote code, stream_chat, one request at a time
        spec = ModelSpec(name="glm-remote", adapter="chatglm", path=src, trust_remote_code=True,
                         device=args.device, dtype=args.dtype)  # fmt: skip
        remote = ChatGLMAdapter(spec, root / "cache")
        started = time.perf_counter()
        remote.load()
        remote_load = time.perf_counter() - started
        steps: list[int] = []  # this request's generated ids: the argmax of each forward (greedy)
        forward = remote.model.forward

        def counted(*a: Any, **kw: Any) -> Any:  # one forward call = one generated token
            out = forward(*a, **kw)
            steps.append(int(out.logits[0, -1].argmax()))
            return out

        remote.model.forward = counted
        serial = SerialEngine(remote)

        def ask(msgs: tuple[ChatMessage, ...], max_tokens: int = args.max_tokens) -> tuple[str, int, list]:
            job = GenerateJob(request_id="r", model="m", expires_at=time.time() + 3600, messages=msgs,
                              params=params.model_copy(update={"max_tokens": max_tokens}))  # fmt: skip
            sink = QueueSink()
            steps.clear()
            prompt_lens.append(len(ids := serial.prompt_ids(job)))
            serial.submit_job(job, ids, sink)
            text = ""
            while not isinstance(item := sink.items.get(timeout=600), Finished):
                if isinstance(item, Exception):
                    raise item
                text += item
            return text, item.usage.completion_tokens, list(steps)

        prompt_lens: list[int] = []
        try:
            ask(messages[0], 8)  # warm-up
            counted_usage, remote_texts, remote_ids, prompt_lens = 0, [], [], []
            started = time.perf_counter()
            for msgs in messages:
                text, used, ids = ask(msgs)
                remote_texts.append(text)
                remote_ids.append(ids)
                counted_usage += used
            remote_s, remote_tokens = time.perf_counter() - started, sum(map(len, remote_ids))
        finally:
            serial.close()
        remote_prompts = [remote.prompt_ids(GenerateJob(request_id=f"p{i}", model="glm", messages=tuple(m),
                                                        expires_at=time.time() + 60))
                          for i, m in enumerate(messages)]  # fmt: skip  # the ids its own code builds
        del remote, serial, forward, counted

        # (2) converted: GlmForCausalLM, hf-causal adapter, one batch
        started = time.perf_counter()
        report = convert_checkpoint(src, root / "converted")
        convert_s = time.perf_counter() - started
        spec = ModelSpec(name="glm-converted", path=root / "converted", device=args.device, dtype=args.dtype,
                         slots=n, prefix_cache=False)  # fmt: skip
        hf = HfCausalAdapter(spec, root / "cache")
        hf.load()
        engine = BatchEngine(hf, slots=n)
        prompts = [hf.chat_prompt(list(m)) for m in messages]
        results: dict[int, tuple[str, int]] = {}
        hf_ids: dict[tuple[int, ...], list[int]] = {tuple(p): [] for p in prompts}
        accept = engine._accept

        def recorded(seq: Any, token: int, logprob: Any = None) -> bool:
            hf_ids.setdefault(tuple(seq.prompt_ids), []).append(token)
            return accept(seq, token, logprob)

        engine._accept = recorded  # type: ignore[method-assign]

        def run(i: int, max_tokens: int | None = None) -> None:
            p = params.model_copy(update={"max_tokens": max_tokens}) if max_tokens else params
            *texts, finished = generate(engine, prompts[i], p)
            results[i] = ("".join(texts), finished.usage.completion_tokens)

        try:
            run(0, 8)  # warm-up
            results.clear()
            hf_ids[tuple(prompts[0])].clear()
            batched_s = _concurrently(run, list(range(n)))
        finally:
            engine.close()
        hf_texts = [results[i][0] for i in range(n)]
        hf_tokens = sum(results[i][1] for i in range(n))

    print(f"checkpoint: {src} ({report.family}); {args.device} "
          f"{args.dtype}; {n} requests x {args.max_tokens} tokens, greedy")  # fmt: skip
    print(f"remote-code load {remote_load:.1f} s; convert {convert_s:.1f} s")
    a = _row("remote code, stream_chat, serial", remote_tokens, remote_s)
    b = _row(f"converted, BatchEngine(slots={n})", hf_tokens, batched_s)
    print(f"{'ratio converted/remote':<34}: {b / a:.2f}x")
    print(f"(the serial engine's usage for the remote replies, by re-encoding their text: {counted_usage})")
    same_ids = sum(r == h for r, h in zip(remote_prompts, prompts))
    print(f"prompt ids identical (build_chat_input vs chat_prompt): {same_ids}/{n}; prompt lengths: "
          f"its own code {len(remote_prompts[0] or [])}, chatglm adapter's prompt_ids {prompt_lens[0]}, "
          f"converted {len(prompts[0])} (request 0)")  # fmt: skip
    agree = []
    for r, h in zip(remote_ids, (hf_ids[tuple(p)] for p in prompts)):
        agree.append(next((k for k, (x, y) in enumerate(zip(r, h)) if x != y), min(len(r), len(h))))
    print(f"generated ids agree for the first {agree} tokens (remote made {[len(r) for r in remote_ids]})")
    for i, (r, h) in enumerate(zip(remote_texts, hf_texts)):
        common = next((k for k, (x, y) in enumerate(zip(r, h)) if x != y), min(len(r), len(h)))
        state = "identical" if r == h else f"agree for {common} of {len(r)}/{len(h)} chars"
        print(f"  request {i}: {state}")
        if r != h:
            print(f"    remote:    {r[:80]!r}\n    converted: {h[:80]!r}")
    print(f"texts identical: {sum(r == h for r, h in zip(remote_texts, hf_texts))}/{n}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", help="a THUDM remote-code checkpoint: measure both paths on it")
    parser.add_argument("--family", default="chatglm3", choices=("chatglm2", "chatglm3", "glm4"))
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    args = parser.parse_args()
    if args.checkpoint:
        checkpoint(args)
    else:
        synthetic(args)


if __name__ == "__main__":
    main()
