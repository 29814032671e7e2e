"""The CUDA path of the batched engine, checked in one short run on a GPU (no network).

    python scripts/gpu_check.py [--quick]

1. Correctness, for float16 and bfloat16 on a tiny random Llama: greedy text of 8 prompts, each
   alone and all 8 batched together (the batch's result must not depend on its neighbours);
   seeded sampling repeats alone vs batched; a cancelled request frees its slot.
2. Speed, on a ~0.4B-parameter Llama-shaped model with random weights (bf16): transformers'
   in-process `generate` (one stream, a static batch of 32) against QueueChat's engine with 32
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


def load(folder: Path, dtype: str, cache: Path) -> HfCausalAdapter:
    adapter = HfCausalAdapter(ModelSpec(name=f"m-{dtype}", path=folder, device=DEVICE, dtype=dtype), cache)
    adapter.load()
    return adapter


def text_of(engine: BatchEngine, ids: list[int], params: SamplingParams) -> str:
    return "".join(item for item in generate(engine, ids, params) if isinstance(item, str))


def together(engine: BatchEngine, prompts: list[list[int]], params: list[SamplingParams]) -> list[str]:
    out: list[str] = [""] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def one(k: int) -> None:
        barrier.wait()
        out[k] = text_of(engine, prompts[k], params[k])

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


def correctness(root: Path) -> list[tuple[str, str, bool]]:
    folder = make_tiny_model(root / "tiny", seed=1)
    rows = []
    for dtype in ("float16", "bfloat16"):
        adapter = load(folder, dtype, root / "cache")
        engine = BatchEngine(adapter, slots=8)
        try:
            ids = [adapter.text_prompt(p) for p in PROMPTS]
            greedy = SamplingParams(temperature=0.0, max_tokens=32)
            alone = [text_of(engine, i, greedy) for i in ids]
            batched = together(engine, ids, [greedy] * len(ids))
            same = sum(a == b for a, b in zip(alone, batched))
            rows.append((dtype, f"greedy, batched = alone ({same}/8 prompts)", same == 8))
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
            del adapter
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
    return rows


def big_model(root: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = root / "big"
    tokenizer = write_tiny_tokenizer(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=1536, intermediate_size=4096, num_hidden_layers=16,
                         num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, torch_dtype="bfloat16")  # fmt: skip
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = None  # random weights: run to max_new_tokens
    model.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    print(f"speed model: Llama-shaped, {params / 1e6:.0f} M parameters, random weights, bf16", flush=True)
    return folder


def speed(root: Path, new_tokens: int, clients: int) -> list[tuple[str, float]]:
    folder = big_model(root)
    adapter = load(folder, "bfloat16", root / "cache")
    ids = [adapter.text_prompt(PROMPTS[k % len(PROMPTS)] + f" ({k})") for k in range(clients)]
    model = adapter.model
    rows = []

    def timed_generate(batch: list[list[int]]) -> float:
        width = max(len(i) for i in batch)
        pad = adapter.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in batch], device="cuda")
        mask = (input_ids != pad).long()
        torch.cuda.synchronize()
        started = time.perf_counter()
        model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=pad)  # fmt: skip
        torch.cuda.synchronize()
        return len(batch) * new_tokens / (time.perf_counter() - started)

    # Every path runs twice and the second run counts: the first meets each new shape (cuBLAS
    # heuristics, allocator growth) for the first time.
    rows.append(("transformers generate, 1 stream", max(timed_generate(ids[:1]) for _ in range(2))))
    rows.append((f"transformers generate, static batch of {clients}", max(timed_generate(ids) for _ in range(2))))
    rows.append(paged(model, ids, new_tokens))
    engine = BatchEngine(adapter, slots=clients)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=new_tokens)
        best_one = best_many = 0.0
        for _ in range(2):
            started = time.perf_counter()
            text_of(engine, ids[0], params)
            best_one = max(best_one, new_tokens / (time.perf_counter() - started))
            started = time.perf_counter()
            together(engine, ids, [params] * clients)
            best_many = max(best_many, clients * new_tokens / (time.perf_counter() - started))
        rows.append(("QueueChat engine, 1 stream", best_one))
        rows.append((f"QueueChat engine, {clients} concurrent requests", best_many))
    finally:
        engine.close()
    return rows


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
            torch.cuda.synchronize()
            started = time.perf_counter()
            out = model.generate_batch(inputs=ids, generation_config=config)  # type: ignore[attr-defined]
            torch.cuda.synchronize()
            tokens = sum(len(o.generated_tokens) for o in out.values())
            best = max(best, tokens / (time.perf_counter() - started))
        return name, best
    except Exception as exc:  # noqa: BLE001  (an API that moves between versions: report, go on)
        print(f"generate_batch failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        return name, 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="correctness only")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--device", default="cuda", help="cpu: try the correctness part without a GPU")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else DEVICE
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checks = correctness(root)
        print("\n| dtype | check | result |\n|---|---|---|")
        for dtype, what, ok in checks:
            print(f"| {dtype} | {what} | {'pass' if ok else 'FAIL'} |", flush=True)
        if not args.quick:
            rows = speed(root, args.new_tokens, args.clients)
            base = rows[1][1]
            print(f"\n| path ({args.new_tokens} new tokens each) | tok/s | vs static batch |\n|---|---:|---:|")
            for name, tps in rows:
                print(f"| {name} | {tps:,.0f} | {tps / base:.2f}x |", flush=True)
    if not all(ok for _, _, ok in checks):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
