"""The cost of constraining: the same closed-loop level with free replies and with replies held to a
JSON schema (grammar-constrained decoding), alternating, in one run (`python -m bench --structured`).

The schema is open-ended (an answer string and a list of keywords), so a constrained reply runs
nearly as long as a free one; the table gives both replies' mean length, since a shorter reply
spends more of its time in prefill and lowers tokens/s by itself.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.load import run
from bench.stack import Stack

ANSWER = {"type": "object", "properties": {"answer": {"type": "string"},
                                           "keywords": {"type": "array", "items": {"type": "string"}}},
          "required": ["answer", "keywords"]}  # fmt: skip
CONSTRAINED = {"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER}}}


def bench_structured(model: str, models_file: Path, concurrency: list[int], rounds: int, max_tokens: int,
                     count: Callable[[str], int], url: str | None = None) -> None:  # fmt: skip
    stack = None
    if url is None:
        stack = Stack(model, models_file, Path(tempfile.mkdtemp(prefix="bench-structured-")))
        stack.wait_ready()
        url = stack.url
    try:
        run(url, model, 2, 1, 8, count)  # warm-up
        run(url, model, 2, 1, 8, count, CONSTRAINED)  # and the grammar's first compile
        print(f"\n### cost of constraining: {model}, max_tokens {max_tokens}, medians of 3 alternating runs\n")
        print("| conc | free tok/s | constrained tok/s | constrained/free | tokens a reply, free / constrained "
              "| errors |\n|---:|---:|---:|---:|---:|---:|", flush=True)  # fmt: skip
        for c in concurrency:
            speed: list[list[float]] = [[], []]  # free, constrained
            tokens, replies, errors = [0, 0], [0, 0], 0
            for k in range(6):
                level = run(url, model, c, rounds, max_tokens, count, CONSTRAINED if k % 2 else None)
                speed[k % 2].append(level.tokens_per_s)
                tokens[k % 2] += level.tokens
                replies[k % 2] += level.requests
                errors += level.errors
            p, q = statistics.median(speed[0]), statistics.median(speed[1])
            lengths = " / ".join(f"{t / max(1, r):.1f}" for t, r in zip(tokens, replies))
            print(f"| {c:>3} | {p:8.1f} | {q:8.1f} | {q / p:6.3f} | {lengths} | {errors} |", flush=True)
    finally:
        if stack:
            stack.stop()
