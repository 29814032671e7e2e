"""What converting a ChatGLM checkpoint buys: batched decoding against one request at a time.

    python -m bench.chatglm_paths                       # CPU, a small random ChatGLM3-shaped model
    python -m bench.chatglm_paths --device cuda --hidden 1024 --layers 8 --requests 16

Writes a random checkpoint in THUDM's remote-code format (tests/tiny_thudm.py, sizes from the
flags), converts it with adapters/glm_convert.py, loads the result with the hf-causal adapter and
sends the same greedy chat requests twice to one BatchEngine: all at once (one batch), then one
after another (what the remote-code `chatglm` adapter does: one `stream_chat` at a time per
worker, here with the same network and KV cache, so only the batching differs).  Prints the
generated tokens per second of both and the ratio, measured in the same run.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", default="chatglm3", choices=("chatglm2", "chatglm3", "glm4"))
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    args = parser.parse_args()

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
        prompts = [adapter.chat_prompt([ChatMessage(role="user", content=f"Question {i}: what is {i} + {i}?")])
                   for i in range(args.requests)]  # fmt: skip

        def run(ids: list[int], out: list[int]) -> None:
            *_, finished = generate(engine, ids, params)
            out.append(finished.usage.completion_tokens)

        try:
            run(prompts[0], [])  # warm-up
            tokens: list[int] = []
            started = time.perf_counter()
            for ids in prompts:
                run(ids, tokens)
            serial_s, serial_tokens = time.perf_counter() - started, sum(tokens)

            tokens = []
            threads = [threading.Thread(target=run, args=(ids, tokens)) for ids in prompts]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            batched_s, batched_tokens = time.perf_counter() - started, sum(tokens)
        finally:
            engine.close()

    print(f"model: {args.family}-shaped, hidden {args.hidden}, {args.layers} layers, {args.heads} heads; "
          f"{args.device} {args.dtype}; {args.requests} requests x {args.max_tokens} tokens, greedy")  # fmt: skip
    serial, batched = serial_tokens / serial_s, batched_tokens / batched_s
    print(f"one at a time : {serial_tokens:5d} tokens in {serial_s:6.2f} s = {serial:8.1f} tok/s")
    print(f"batched       : {batched_tokens:5d} tokens in {batched_s:6.2f} s = {batched:8.1f} tok/s")
    print(f"speed-up      : {batched / serial:.2f}x")


if __name__ == "__main__":
    main()
