"""`queuechat batch submit|status|results`: the Batch API from a shell, with a progress bar."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

TERMINAL = ("completed", "failed", "expired", "cancelled")


def add_parser(sub: argparse._SubParsersAction) -> None:
    batch = sub.add_parser("batch", help="submit a JSONL batch, follow it, fetch its results")
    actions = batch.add_subparsers(dest="action", required=True)
    submit = actions.add_parser("submit", help="upload FILE and start a batch (then follow it with a progress bar)")
    submit.add_argument("file", type=Path, help="JSONL: one request body per line, or full batch lines "
                        "({custom_id, method, url, body})")
    submit.add_argument("--model", help="the model for lines whose body names none")
    submit.add_argument("--endpoint", default="/v1/chat/completions",
                        choices=("/v1/chat/completions", "/v1/completions", "/v1/embeddings"))
    submit.add_argument("--no-wait", action="store_true", help="print the batch id and return")
    status = actions.add_parser("status", help="the batch as JSON")
    status.add_argument("id")
    results = actions.add_parser("results", help="the output file's lines (--errors: the error file's)")
    results.add_argument("id")
    results.add_argument("--errors", action="store_true")
    results.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    for parser in (submit, status, results):
        parser.add_argument("--url", default="http://127.0.0.1:8000/v1")
        parser.add_argument("--api-key", default="none")
    batch.set_defaults(run=run)


def _lines(path: Path, model: str | None, endpoint: str) -> bytes:
    out = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        if not raw.strip():
            continue
        item = json.loads(raw)
        if "body" not in item:  # a bare request body
            item = {"custom_id": f"line-{number}", "method": "POST", "url": endpoint, "body": item}
        if model and "model" not in item["body"]:
            item["body"]["model"] = model
        out.append(json.dumps(item))
    return ("\n".join(out) + "\n").encode()


def _follow(client, batch_id: str) -> object:
    from tqdm import tqdm

    batch = client.batches.retrieve(batch_id)
    with tqdm(total=batch.request_counts.total or None, unit="req", desc=batch_id[:16], file=sys.stderr) as bar:
        while True:
            counts = batch.request_counts
            if counts.total:
                bar.total = counts.total
            bar.n = counts.completed + counts.failed
            bar.set_postfix_str(f"{batch.status}, {counts.failed} failed")
            if batch.status in TERMINAL:
                return batch
            time.sleep(0.5)
            batch = client.batches.retrieve(batch_id)


def run(args: argparse.Namespace, _: list[str]) -> None:
    import openai

    client = openai.OpenAI(base_url=args.url, api_key=args.api_key, max_retries=2)
    try:
        if args.action == "submit":
            source = client.files.create(file=(args.file.name, _lines(args.file, args.model, args.endpoint)),
                                         purpose="batch")  # fmt: skip
            batch = client.batches.create(input_file_id=source.id, endpoint=args.endpoint, completion_window="24h")
            print(batch.id, flush=True)
            if not args.no_wait:
                batch = _follow(client, batch.id)
                print(f"{batch.status}: {batch.request_counts.completed} completed, {batch.request_counts.failed} "
                      f"failed; results: queuechat batch results {batch.id}", file=sys.stderr)  # fmt: skip
                if batch.status != "completed":
                    raise SystemExit(1)
        elif args.action == "status":
            print(client.batches.retrieve(args.id).model_dump_json(indent=2))
        else:
            batch = client.batches.retrieve(args.id)
            file_id = batch.error_file_id if args.errors else batch.output_file_id
            if file_id is None:
                raise SystemExit(f"batch {args.id} ({batch.status}) has no {'error' if args.errors else 'output'} file")
            content = client.files.content(file_id).content
            if args.output:
                args.output.write_bytes(content)
            else:
                sys.stdout.write(content.decode())
    except openai.APIError as exc:
        raise SystemExit(f"queuechat batch: {exc}") from None
