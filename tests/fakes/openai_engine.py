"""A stand-in for `vllm serve` in tests: the same command line (the flags the vLLM engine passes)
and the same protocol (OpenAI's streaming completions with token-id prompts, vLLM's logprobs
spelling, /health), with a made-up model: each token is a word picked from the prompt's ids and
the seed (greedy: the prompt alone), so replies are reproducible.

Extra flags, for tests: --token-delay S (seconds per token), --record FILE (each request's body,
and how it ended, as JSON lines).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

WORDS = ["alpha", "beta", "gamma", "delta", "echo", "fox", "golf", "hotel", "india", "juliet", "kilo", "lima"]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--dtype")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--record", type=Path)
    return parser.parse_args(argv)


def make_app(args: argparse.Namespace) -> Starlette:
    def record(entry: dict[str, Any]) -> None:
        if args.record is not None:
            with open(args.record, "a") as f:
                f.write(json.dumps(entry) + "\n")

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({})

    async def completions(request: Request) -> Any:
        body = await request.json()
        if body.get("model") != args.served_model_name:
            return JSONResponse({"error": {"message": f"model {body.get('model')} does not exist"}}, status_code=404)
        prompt = body["prompt"]
        if not isinstance(prompt, list) or not all(isinstance(t, int) for t in prompt):
            return JSONResponse({"error": {"message": "this fake takes token ids"}}, status_code=400)
        greedy = body.get("temperature", 1.0) == 0
        rng = random.Random(sum(prompt) if greedy else body.get("seed"))
        stops, top = body.get("stop") or [], body.get("logprobs")
        entry = {"body": body, "ended": "finished"}

        async def events() -> Any:
            text, n = "", 0
            finish = "length"
            try:
                while n < body["max_tokens"]:
                    await asyncio.sleep(args.token_delay)
                    piece = " " + WORDS[rng.randrange(len(WORDS))]
                    n += 1
                    hit = next((s for s in stops if s in text + piece), None)
                    if hit is not None:
                        piece = (text + piece)[: (text + piece).index(hit)][len(text):]
                        finish = "stop"
                    text += piece
                    choice: dict[str, Any] = {"index": 0, "text": piece, "finish_reason": None, "logprobs": None}
                    if top is not None:
                        others = {" " + w: -2.0 - i for i, w in enumerate(WORDS[:top])}
                        choice["logprobs"] = {"tokens": [piece], "token_logprobs": [-0.5], "text_offset": [len(text)],
                                              "top_logprobs": [{**others, piece: -0.5}]}  # fmt: skip
                    yield f"data: {json.dumps({'object': 'text_completion', 'choices': [choice]})}\n\n"
                    if finish == "stop":
                        break
                last = {"index": 0, "text": "", "finish_reason": finish, "logprobs": None}
                yield f"data: {json.dumps({'object': 'text_completion', 'choices': [last]})}\n\n"
                if (body.get("stream_options") or {}).get("include_usage"):
                    usage = {"prompt_tokens": len(prompt), "completion_tokens": n, "total_tokens": len(prompt) + n}
                    yield f"data: {json.dumps({'object': 'text_completion', 'choices': [], 'usage': usage})}\n\n"
                record(entry)  # before the end: a client that has read it finds the request recorded
                yield "data: [DONE]\n\n"
            except asyncio.CancelledError:
                entry["ended"] = "aborted"  # the client closed the connection
                record(entry)
                raise

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/health", health), Route("/v1/completions", completions, methods=["POST"])])


if __name__ == "__main__":
    arguments = parse()
    uvicorn.run(make_app(arguments), host=arguments.host, port=arguments.port, log_level="warning")
