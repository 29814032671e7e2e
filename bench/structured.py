"""The cost of constraining: the same closed-loop level with free replies and with replies held to a
JSON schema (grammar-constrained decoding), alternating, in one run (`python -m bench --structured`).

The schema is open-ended (an answer string and a list of keywords), so a constrained reply runs about
as long as a free one and tokens/s compares like with like: what the masks cost per token.
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
        print("| conc | free tok/s | constrained tok/s | constrained/free | free errors | constrained errors |")
        print("|---:|---:|---:|---:|---:|---:|", flush=True)
        for c in concurrency:
            free, held, errors = [], [], [0, 0]
            for k in range(6):
                level = run(url, model, c, rounds, max_tokens, count, CONSTRAINED if k % 2 else None)
                (held if k % 2 else free).append(level.tokens_per_s)
                errors[k % 2] += level.errors
            p, q = statistics.median(free), statistics.median(held)
            print(f"| {c:>3} | {p:8.1f} | {q:8.1f} | {q / p:6.3f} | {errors[0]} | {errors[1]} |", flush=True)
    finally:
        if stack:
            stack.stop()
