"""`queuechat`: one command for every part.

    queuechat serve                     the gateway (uvicorn)
    queuechat worker --model NAME[,..]  a Celery worker for those model queues
    queuechat models                    the models file, and which models live workers serve
    queuechat chat MODEL                chat in the terminal (streams; Ctrl-C stops an answer)
    queuechat bench [ARGS]              the benchmark (python -m bench)
    queuechat soak [ARGS]               mixed traffic and a leak report (python -m bench.soak)
    queuechat flower [ARGS]             Flower, counting every model queue
    queuechat convert-chatglm SRC DST   a THUDM ChatGLM2/3 / GLM-4 checkpoint -> transformers' GLM (batched)
    queuechat responses get|wait|cancel ID   a stored or background response (the Responses API)
    queuechat batch submit|status|results    the Batch API, with a progress bar

Settings come from the environment (QUEUECHAT_REDIS_URL or QUEUECHAT_REDIS_SENTINELS, QUEUECHAT_MODELS_FILE, ...).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from queuechat import batch_cli
from workers.settings import WorkerSettings


def _serve(args: argparse.Namespace, _: list[str]) -> None:
    from gateway.__main__ import serve

    serve(args.host, args.port, args.log_level, args.access_log)


def _worker(args: argparse.Namespace, extra: list[str]) -> None:
    from queuechat.launcher import worker_args
    from workers.celery import app

    app.worker_main(worker_args(args.model.split(","), args.name, args.loglevel, args.concurrency, extra))


def _models(args: argparse.Namespace, _: list[str]) -> None:
    import redis

    from adapters.select import choose_adapter
    from protocol import ModelFailure, failures_key, live_workers_key, slots_key
    from protocol.models_file import load_models_file
    from protocol.redis_clients import describe, sync_client

    settings = WorkerSettings()
    models = load_models_file(settings.models_file)
    client = sync_client(settings, socket_timeout=3)
    try:
        seconds, _micros = client.time()
        reachable = True
    except redis.RedisError as exc:
        print(f"(Redis at {describe(settings)} unreachable: {exc}; showing the models file only)")
        reachable, seconds = False, 0
    print(f"models file: {settings.models_file}")
    print(f"{'model':24} {'adapter':11} {'slots':>5}  {'live workers (free/total slots)':34} path")
    failures: list[str] = []
    for name, spec in models.models.items():
        live = "-"
        if reachable:
            workers = [w.decode() for w in client.zrangebyscore(live_workers_key(name), seconds - settings.heartbeat_ttl, "+inf")]
            slots = {k.decode(): v.decode() for k, v in client.hgetall(slots_key(name)).items()}
            live = ", ".join(f"{w} ({slots.get(w, '?')})" for w in workers) or "none"
            failed = [(w.decode(), ModelFailure.model_validate_json(raw)) for w, raw in client.hgetall(failures_key(name)).items()]
            failures += [f"  {name} failed to load on {w}: {f.reason}" for w, f in failed if f.at >= seconds - settings.heartbeat_ttl]
        print(f"{name:24} {choose_adapter(spec):11} {spec.slots or 'auto':>5}  {live:34} {spec.path or ''}")
    if failures:
        print("\n" + "\n".join(failures))


def _chat(args: argparse.Namespace, _: list[str]) -> None:
    import openai

    client = openai.OpenAI(base_url=args.url, api_key=args.api_key, max_retries=0)
    history: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    questions = iter([args.once]) if args.once is not None else None
    while True:
        try:
            question = next(questions) if questions else input("you> ")
        except (EOFError, StopIteration):
            return
        if question.strip() in ("/quit", "/exit"):
            return
        if not question.strip():
            continue
        history.append({"role": "user", "content": question})
        answer = ""
        try:
            stream = client.chat.completions.create(model=args.model, messages=history, stream=True,
                                                    max_tokens=args.max_tokens, temperature=args.temperature)  # fmt: skip
            print(f"{args.model}> ", end="", flush=True)
            for chunk in stream:
                piece = chunk.choices[0].delta.content if chunk.choices else None
                if piece:
                    answer += piece
                    print(piece, end="", flush=True)
        except KeyboardInterrupt:
            stream.close()  # the server cancels the request
            print(" [stopped]", end="")
        except openai.APIError as exc:
            print(f"error: {exc}", file=sys.stderr)
            history.pop()
            if questions:
                raise SystemExit(1) from exc
            continue
        print()
        history.append({"role": "assistant", "content": answer})


def _responses(args: argparse.Namespace, _: list[str]) -> None:
    """`responses get ID` prints a response as JSON; `responses wait ID` polls until it ends and
    prints its text (or its JSON with --json).  Exit 1 when it failed or was cancelled, 2 when
    the wait timed out."""
    import openai

    client = openai.OpenAI(base_url=args.url, api_key=args.api_key, max_retries=2)
    try:
        if args.action == "cancel":
            response = client.responses.cancel(args.id)
        else:
            response = client.responses.retrieve(args.id)
        deadline = time.monotonic() + args.timeout
        while args.action == "wait" and response.status in ("queued", "in_progress"):
            if time.monotonic() > deadline:
                print(f"{args.id} is still {response.status} after {args.timeout:g} s", file=sys.stderr)
                raise SystemExit(2)
            time.sleep(args.interval)
            response = client.responses.retrieve(args.id)
    except openai.APIError as exc:
        raise SystemExit(f"queuechat responses: {exc}") from None
    if args.action == "wait" and not args.json:
        print(response.output_text if response.status in ("completed", "incomplete") else
              f"{args.id} {response.status}: {response.error.message if response.error else ''}")  # fmt: skip
    else:
        print(response.model_dump_json(indent=2, exclude_unset=True))
    if response.status in ("failed", "cancelled"):
        raise SystemExit(1)


def _convert_chatglm(args: argparse.Namespace, _: list[str]) -> None:
    from adapters.glm_convert import NotConvertible, convert_checkpoint

    try:
        report = convert_checkpoint(args.src, args.dst, dtype=args.dtype, family=args.family,
                                    tokenizer=not args.no_tokenizer, overwrite=args.overwrite)  # fmt: skip
    except (NotConvertible, FileExistsError) as exc:
        raise SystemExit(f"queuechat convert-chatglm: {exc}") from None
    print(report.summary())
    print(f"serve it with `path: {report.dst}` (adapter auto or hf-causal)"
          + (", `trust_remote_code: true`" if report.tokenizer == "remote-code" else ""))  # fmt: skip


def _delegate(module: str) -> object:
    def run(_: argparse.Namespace, extra: list[str]) -> None:
        import importlib

        sys.argv = [f"queuechat {module}", *extra]
        importlib.import_module(module).main()

    return run


def _flower(_: argparse.Namespace, extra: list[str]) -> None:
    from queuechat.flower import run

    run(extra)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="queuechat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--access-log", action="store_true")
    serve.set_defaults(run=_serve)
    worker = sub.add_parser("worker", help="run a worker for model queues (extra args go to celery worker)")
    worker.add_argument("--model", required=True, help="model name(s), comma-separated: the queues to consume")
    worker.add_argument("--name", help="worker node name (default: MODEL@hostname)")
    worker.add_argument("-c", "--concurrency", type=int, help="task threads (default: the models' slots)")
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(run=_worker)
    sub.add_parser("models", help="list the models file and live workers").set_defaults(run=_models)
    chat = sub.add_parser("chat", help="chat with a model in the terminal")
    chat.add_argument("model")
    chat.add_argument("--url", default="http://127.0.0.1:8000/v1")
    chat.add_argument("--api-key", default="none")
    chat.add_argument("--system", help="a system message")
    chat.add_argument("--max-tokens", type=int, default=None)
    chat.add_argument("--temperature", type=float, default=None, help="default: the model's")
    chat.add_argument("--once", help="ask one question, print the answer and exit")
    chat.set_defaults(run=_chat)
    responses = sub.add_parser("responses", help="a stored or background response: get, wait for, or cancel it")
    responses.add_argument("action", choices=("get", "wait", "cancel"))
    responses.add_argument("id", help="the response id (resp_...)")
    responses.add_argument("--url", default="http://127.0.0.1:8000/v1")
    responses.add_argument("--api-key", default="none")
    responses.add_argument("--timeout", type=float, default=600.0, help="wait: give up after this many seconds")
    responses.add_argument("--interval", type=float, default=0.5, help="wait: seconds between polls")
    responses.add_argument("--json", action="store_true", help="wait: print the whole response as JSON")
    responses.set_defaults(run=_responses)
    batch_cli.add_parser(sub)
    convert = sub.add_parser("convert-chatglm", help="convert a THUDM ChatGLM2/3 or GLM-4 checkpoint to transformers' GLM")
    convert.add_argument("src", type=Path, help="the THUDM checkpoint folder (config.json model_type chatglm)")
    convert.add_argument("dst", type=Path, help="the new folder (GlmForCausalLM, safetensors, fast tokenizer)")
    convert.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="default: the source's")
    convert.add_argument("--family", choices=("chatglm2", "chatglm3", "glm4"), help="default: read from the files")
    convert.add_argument("--no-tokenizer", action="store_true", help="convert the weights only")
    convert.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    convert.set_defaults(run=_convert_chatglm)
    sub.add_parser("bench", help="the benchmark (see --help)", add_help=False).set_defaults(run=_delegate("bench.__main__"))
    sub.add_parser("soak", help="the soak run (see --help)", add_help=False).set_defaults(run=_delegate("bench.soak"))
    sub.add_parser("flower", help="Flower, with every model queue", add_help=False).set_defaults(run=_flower)
    return top


def main(argv: list[str] | None = None) -> None:
    args, extra = parser().parse_known_args(argv)
    if extra and args.command in ("models", "chat", "serve", "convert-chatglm", "responses", "batch"):
        parser().error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "serve":
        from gateway.settings import GatewaySettings

        settings = GatewaySettings()
        args.host = args.host or settings.host
        args.port = args.port or settings.port
    args.run(args, extra)


if __name__ == "__main__":
    main()
