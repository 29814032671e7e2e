"""The CUDA path of the batched engine, checked in one short run on a GPU (no network).

    python scripts/gpu_check.py [--quick]

1. Correctness, for float16 and bfloat16 on a tiny random Llama: greedy text of 8 prompts, each
   alone and all 8 batched together (the batch's result must not depend on its neighbours), also
   with prompts prefilled in 16-token chunks while rows join and leave; seeded sampling repeats
   alone vs batched; a cancelled request frees its slot.  `dtype: auto` must pick bf16 here.
2. Speed, on a ~0.6B-parameter Llama-shaped model with random weights (bf16): transformers'
   in-process `generate` (one stream, static batches of 16 and 64) and transformers' own paged
   continuous batching (`generate_batch`) against QueueChat's engine with 1, 16 and 64
   concurrent requests, 128 new tokens each, all in one run on the same device.
Each speed figure is the better of two runs (the first meets every shape for the first time).
Prints Markdown tables; exits 1 if a correctness check fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from adapters.hf_causal import HfCausalAdapter  # noqa: E402
from protocol import SamplingParams  # noqa: E402
from protocol.models_file import ModelSpec  # noqa: E402
from tests.engines import generate  # noqa: E402
from tests.tiny_models import make_tiny_model, write_tiny_tokenizer  # noqa: E402
from workers.batch_engine import BatchEngine  # noqa: E402
from workers.contract import Cancelled  # noqa: E402

PROMPTS = [f"Tell me about item {i} and why {i * 7} matters." for i in range(8)]


DEVICE = "cuda"
ATTENTION: str | None = None  # the speed model's attn_implementation (None: the adapter's choice)


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def load(folder: Path, dtype: str, cache: Path, **options: object) -> HfCausalAdapter:
    spec = ModelSpec(name=f"m-{dtype}", path=folder, device=DEVICE, dtype=dtype, options=options)
    adapter = HfCausalAdapter(spec, cache)
    adapter.load()
    return adapter


def text_of(engine: BatchEngine, ids: list[int], params: SamplingParams) -> str:
    return "".join(item for item in generate(engine, ids, params) if isinstance(item, str))


class Collect:
    """A sink that only records, in the engine's thread, as the worker's publisher does (its task
    threads wait for the end, not for each token)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.failed: str | None = None

    def token(self, text: str, logprobs: object = None) -> None:
        self.parts.append(text)

    def done(self, finish_reason: str, usage: object) -> None:
        pass

    def error(self, code: str, message: str, param: str | None = None) -> None:
        self.failed = code

    def keepalive(self) -> None:
        pass


def together(engine: BatchEngine, prompts: list[list[int]], params: list[SamplingParams]) -> list[str]:
    """Submit all at once; each one's text (or <error code>)."""
    sinks = [Collect() for _ in prompts]
    seqs = [engine.submit(p, q, sink) for p, q, sink in zip(prompts, params, sinks)]
    for seq in seqs:
        seq.finished.wait(600)
    return [f"<{s.failed}>" if s.failed else "".join(s.parts) for s in sinks]


def correctness(root: Path, attention: list[str]) -> list[tuple[str, str, bool]]:
    folder = make_tiny_model(root / "tiny", seed=1)
    rows = []
    auto = load(folder, "auto", root / "cache")
    rows.append(("auto", f"dtype auto picks {auto.model.dtype}", auto.model.dtype == torch.bfloat16))
    del auto
    for dtype, attn in [(d, a) for a in attention for d in ("float16", "bfloat16")]:
        adapter = load(folder, dtype, root / "cache", **({"attn_implementation": attn} if attn != "default" else {}))
        dtype = f"{dtype}, {attn} attention"
        engine = BatchEngine(adapter, slots=8)
        chunked = BatchEngine(adapter, slots=8, prefill_chunk=16)
        try:
            ids = [adapter.text_prompt(p * (1 + k % 3)) for k, p in enumerate(PROMPTS)]
            greedy = SamplingParams(temperature=0.0, max_tokens=32)
            alone = [text_of(engine, i, greedy) for i in ids]
            batched = together(engine, ids, [greedy] * len(ids))
            same = sum(a == b for a, b in zip(alone, batched))
            rows.append((dtype, f"greedy, batched = alone ({same}/8 prompts)", same == 8))
            varied = [SamplingParams(temperature=0.0, max_tokens=8 + 6 * k) for k in range(8)]
            alone_v = [text_of(engine, i, p) for i, p in zip(ids, varied)]
            batched = together(chunked, ids, varied)
            same = sum(a == b for a, b in zip(alone_v, batched))
            rows.append((dtype, f"greedy, 16-token prefill chunks, rows joining and leaving = alone ({same}/8)",
                         same == 8))  # fmt: skip
            seeded = [SamplingParams(temperature=0.9, top_p=0.95, seed=100 + k, max_tokens=32) for k in range(8)]
            alone = [text_of(engine, i, p) for i, p in zip(ids, seeded)]
            batched = together(engine, ids, seeded)
            same = sum(a == b for a, b in zip(alone, batched))
            rows.append((dtype, f"seeded sampling, batched = alone ({same}/8)", same == 8))
            stop = threading.Event()
            got: list[object] = []

            def cancelled_one() -> None:
                try:
                    for item in generate(engine, ids[0], SamplingParams(temperature=0.0, max_tokens=4000), stop.is_set):
                        got.append(item)
                        if len(got) == 3:
                            stop.set()
                except Cancelled:
                    got.append("cancelled")

            worker = threading.Thread(target=cancelled_one)
            worker.start()
            worker.join(60)
            freed = not worker.is_alive() and got[-1] == "cancelled"
            rows.append((dtype, "cancel mid-stream frees the slot", freed and text_of(engine, ids[1], greedy) != ""))
        finally:
            engine.close()
            chunked.close()
            del adapter
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
    return rows


def big_model(root: Path, layers: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = root / "big"
    tokenizer = write_tiny_tokenizer(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=1536, intermediate_size=4096, num_hidden_layers=layers,
                         num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, torch_dtype="bfloat16")  # fmt: skip
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = None  # random weights: run to max_new_tokens
    model.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    del model
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    print(f"speed model: Llama-shaped, {params / 1e6:.0f} M parameters, random weights, bf16", flush=True)
    return folder


def speed(root: Path, new_tokens: int, levels: list[int], layers: int) -> list[tuple[str, int, float]]:
    folder = big_model(root, layers)
    adapter = load(folder, "bfloat16", root / "cache", **({"attn_implementation": ATTENTION} if ATTENTION else {}))
    ours = adapter.model.config._attn_implementation
    for attention in dict.fromkeys([ours, "sdpa", "eager"]):
        set_attention(adapter.model, attention)
        raw_steps(adapter, [adapter.text_prompt(PROMPTS[k % len(PROMPTS)]) for k in range(max(levels))], levels)
    set_attention(adapter.model, "sdpa")  # transformers' own default, for generate and generate_batch
    ids = [adapter.text_prompt(PROMPTS[k % len(PROMPTS)] + f" ({k})") for k in range(max(levels))]
    model = adapter.model
    rows = []

    def timed_generate(batch: list[list[int]]) -> float:
        width = max(len(i) for i in batch)
        pad = adapter.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in batch], device=DEVICE)
        mask = (input_ids != pad).long()
        sync()
        started = time.perf_counter()
        model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=pad)  # fmt: skip
        sync()
        return len(batch) * new_tokens / (time.perf_counter() - started)

    # Every path runs twice and the second run counts: the first meets each new shape (cuBLAS
    # heuristics, allocator growth) for the first time.
    for n in levels:
        what = "1 stream" if n == 1 else f"static batch of {n}"
        rows.append((f"transformers generate, {what}", n, max(timed_generate(ids[:n]) for _ in range(2))))
    for n in levels[1:]:
        name, tps = paged(model, ids[:n], new_tokens)
        rows.append((name, n, tps))
    set_attention(adapter.model, ours)
    # Random weights: every path runs to max_tokens (generate's eos_token_id is None above).  Not a
    # logit_bias on EOS: that would put each row through the penalty path, which greedy rows skip.
    adapter._eos_ids = frozenset()
    engine = BatchEngine(adapter, slots=max(levels))
    try:
        params = SamplingParams(temperature=0.0, max_tokens=new_tokens)
        for n in levels:
            best = 0.0
            for _ in range(2):
                started = time.perf_counter()
                together(engine, ids[:n], [params] * n)
                best = max(best, n * new_tokens / (time.perf_counter() - started))
            what = "1 stream" if n == 1 else f"{n} concurrent requests"
            rows.append((f"QueueChat engine ({ours} attention), {what}", n, best))
    finally:
        engine.close()
    return rows


def set_attention(model: torch.nn.Module, name: str) -> None:
    try:
        model.set_attn_implementation(name)  # type: ignore[operator]
    except (AttributeError, ValueError):
        model.config._attn_implementation = name
    print(f"attention: {model.config._attn_implementation}", flush=True)


def raw_steps(adapter: HfCausalAdapter, ids: list[list[int]], levels: list[int]) -> None:
    """The decode batch alone (no engine, no threads): where the engine's time goes."""
    with torch.inference_mode():
        for n in levels:
            batch = adapter.new_batch()
            tokens = batch.add(ids[:n]).argmax(-1).tolist()
            for _ in range(5):
                batch.step(tokens)
            sync()
            started = time.perf_counter()
            for _ in range(40):
                tokens = batch.step(tokens).argmax(-1).tolist()
            ms = (time.perf_counter() - started) / 40 * 1000
            kernel = adapter.model.config._attn_implementation
            print(f"raw HfDecodeBatch.step ({kernel}), {n} rows: {ms:.1f} ms a step", flush=True)


def paged(model: object, ids: list[list[int]], new_tokens: int) -> tuple[str, float]:
    """transformers' own continuous batching (`generate_batch`, paged attention), when this
    transformers has it; 0 tok/s (and the reason printed) when it fails."""
    from transformers import GenerationConfig

    name = f"transformers generate_batch (paged, continuous), {len(ids)} requests"
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              eos_token_id=None, pad_token_id=0)  # fmt: skip
    try:
        best = 0.0
        for _ in range(2):
            sync()
            started = time.perf_counter()
            out = model.generate_batch(inputs=ids, generation_config=config)  # type: ignore[attr-defined]
            sync()
            tokens = sum(len(o.generated_tokens) for o in out.values())
            best = max(best, tokens / (time.perf_counter() - started))
        return name, best
    except Exception as exc:  # noqa: BLE001  (an API that moves between versions: report, go on)
        print(f"generate_batch failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        return name, 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="correctness only")
    parser.add_argument("--speed-only", action="store_true", help="skip the correctness part")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--levels", type=lambda v: [int(x) for x in v.split(",")], default=[1, 16, 64],
                        help="concurrent requests to measure (the first should be 1)")
    parser.add_argument("--attention", default="default", help="attention kernels to check, comma-separated "
                        "(default: the adapter's choice; eager, sdpa...); the first also runs the speed part")
    parser.add_argument("--layers", type=int, default=24, help="of the speed model (24: ~0.6B parameters)")
    parser.add_argument("--device", default="cuda", help="cpu: try the correctness part without a GPU")
    args = parser.parse_args()
    global DEVICE, ATTENTION
    DEVICE = args.device
    attention = args.attention.split(",")
    ATTENTION = None if attention[0] == "default" else attention[0]
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else DEVICE
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checks = [] if args.speed_only else correctness(root, attention)
        print("\n| dtype | check | result |\n|---|---|---|")
        for dtype, what, ok in checks:
            print(f"| {dtype} | {what} | {'pass' if ok else 'FAIL'} |", flush=True)
        if not args.quick:
            rows = speed(root, args.new_tokens, args.levels, args.layers)
            direct = {n: tps for name, n, tps in rows if name.startswith("transformers generate,")}
            print(f"\n| path ({args.new_tokens} new tokens each) | tok/s | vs generate at that size |\n|---|---:|---:|")
            for name, n, tps in rows:
                print(f"| {name} | {tps:,.0f} | {tps / direct[n]:.2f}x |", flush=True)
    if not all(ok for _, _, ok in checks):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
