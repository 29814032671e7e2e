"""The Batch API through the official SDK: chat and embeddings batches whose output lines equal
the same requests sent directly, bad lines in the error file, cancel mid-way, and a runner
killed mid-batch whose successor finishes it with every line exactly once."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from protocol import batch_run_key, event_log_key
from tests.integration.processes import (
    Gateway,
    RedisServer,
    Worker,
    eventually,
    live_worker,
    pause_queue,
    stack_env,
)

TERMINAL = ("completed", "failed", "expired", "cancelled")


def _sdk(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def _jsonl(lines: list[dict | str]) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def _chat_line(i: int, model: str = "tiny-a", **extra) -> dict:
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"Question {i}?"}], "max_tokens": 4,
                     "temperature": 0, **extra}}  # fmt: skip


def _run(client: openai.OpenAI, lines: list, endpoint: str = "/v1/chat/completions", timeout: float = 180):
    source = client.files.create(file=("in.jsonl", _jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint=endpoint, completion_window="24h",
                                  metadata={"test": "yes"})  # fmt: skip
    assert batch.status == "validating" and batch.metadata == {"test": "yes"}
    deadline = time.monotonic() + timeout
    while (batch := client.batches.retrieve(batch.id)).status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.3)
    return batch


def _lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_a_chat_batch_gives_what_direct_requests_give_and_bad_lines_go_to_the_error_file(client) -> None:
    good = [_chat_line(i) for i in range(200)]
    bad = ["{not json", _chat_line(900, model="no-such-model"), {**_chat_line(901), "url": "/v1/embeddings"},
           _chat_line(1), _chat_line(902, messages=[{"role": "user", "content": "x " * 5000}])]  # fmt: skip
    batch = _run(client, good[:100] + bad + good[100:])
    assert batch.status == "completed", batch
    assert batch.request_counts.total == 205 and batch.request_counts.completed == 200
    assert batch.request_counts.failed == 5
    output = _lines_of(client, batch.output_file_id)
    assert [line["custom_id"] for line in output] == [f"req-{i}" for i in range(200)]  # in input order
    for line in output[:20]:  # each equals the same request sent directly
        i = int(line["custom_id"].split("-")[1])
        direct = client.chat.completions.create(**good[i]["body"])
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"]["choices"][0]["message"]["content"] == direct.choices[0].message.content
    errors = {line["custom_id"]: line for line in _lines_of(client, batch.error_file_id)}
    assert set(errors) == {None, "req-900", "req-901", "req-1", "req-902"}
    assert errors[None]["error"]["code"] == "invalid_json" and errors[None]["error"]["line"] == 101
    assert errors["req-901"]["error"]["code"] == "mismatched_url"
    assert errors["req-1"]["error"]["code"] == "duplicate_custom_id"  # the second req-1 (the first ran)
    assert errors["req-900"]["response"]["status_code"] == 404
    assert errors["req-902"]["response"]["body"]["error"]["code"] in ("context_length_exceeded", "prompt_too_long")


def test_an_embeddings_batch(env, workdir, redis_server, client) -> None:
    with live_worker(["tiny-embed"], env, workdir, redis_server.client):
        lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
                  "body": {"model": "tiny-embed", "input": f"sentence number {i}"}} for i in range(100)]  # fmt: skip
        batch = _run(client, lines, endpoint="/v1/embeddings")
        assert batch.status == "completed" and batch.request_counts.completed == 100
        output = _lines_of(client, batch.output_file_id)
        direct = client.embeddings.create(model="tiny-embed", input="sentence number 7").data[0].embedding
        assert output[7]["response"]["body"]["data"][0]["embedding"] == pytest.approx(direct, abs=1e-6)


@pytest.fixture(scope="module")
def own_stack(workdir, models_file) -> Iterator[tuple[RedisServer, dict[str, str], Worker]]:
    """A Redis, an echo-slow worker and gateways of their own: these tests kill a gateway."""
    server = RedisServer(workdir)
    env = stack_env(server.url, models_file, QUEUECHAT_FILES_DIR=str(workdir / "batch-files"),
                    QUEUECHAT_BATCH_LEASE="2", QUEUECHAT_BATCH_INFLIGHT="4")  # fmt: skip
    worker = Worker(["echo-slow"], env, workdir)
    try:
        worker.wait_live(server.client, 120)
        yield server, env, worker
    finally:
        worker.stop()
        server.stop()


def test_queued_batch_lines_give_no_interactive_request_a_429(own_stack, workdir) -> None:
    import celery

    from protocol.settings import QueueSettings

    server, env, worker = own_stack
    gateway = Gateway({**env, "QUEUECHAT_MAX_QUEUE": "1"}, workdir)
    control = celery.Celery("queuechat-tests", set_as_current=False)
    control.conf.update(QueueSettings(redis_url=server.url).celery_conf())
    try:
        client = _sdk(gateway)
        pause_queue(control.control, "echo-slow", worker.name)
        try:
            source = client.files.create(file=("in.jsonl", _jsonl(_slow_lines(8, 2))), purpose="batch")
            batch = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")  # fmt: skip
            assert eventually(lambda: server.client.llen("echo-slow\x06\x169") == 4, timeout=30)  # lowest priority
            assert server.client.llen("echo-slow") == 0  # what QUEUECHAT_MAX_QUEUE counts
            with ThreadPoolExecutor(1) as pool:
                answer = pool.submit(client.chat.completions.create, **_slow_lines(1, 2)[0]["body"])
                assert eventually(lambda: server.client.llen("echo-slow") == 1, timeout=10)  # admitted
                control.control.add_consumer("echo-slow", destination=[worker.name], reply=True, timeout=5)
                assert answer.result(timeout=60).choices[0].message.content
        finally:
            control.control.add_consumer("echo-slow", destination=[worker.name], reply=True, timeout=5)
        assert eventually(lambda: client.batches.retrieve(batch.id).status == "completed", timeout=60)
    finally:
        control.close()
        gateway.stop()


def _slow_lines(n: int, tokens: int) -> list[dict]:
    return [{"custom_id": f"s{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "echo-slow", "messages": [{"role": "user", "content": f"line {i} " * 8}],
                      "max_tokens": tokens}} for i in range(n)]  # fmt: skip


def test_cancel_mid_way_starts_no_more_lines(own_stack, workdir) -> None:
    server, env, _ = own_stack
    gateway = Gateway(env, workdir)
    try:
        client = _sdk(gateway)
        source = client.files.create(file=("in.jsonl", _jsonl(_slow_lines(40, 20))), purpose="batch")
        batch = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert eventually(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 4, timeout=60)
        assert client.batches.cancel(batch.id).status == "cancelling"
        assert eventually(lambda: client.batches.retrieve(batch.id).status == "cancelled", timeout=30)
        final = client.batches.retrieve(batch.id)
        counts = final.request_counts
        outputs = _lines_of(client, final.output_file_id) + _lines_of(client, final.error_file_id)
        assert len(outputs) == counts.completed + counts.failed < counts.total == 40
        sent = {int(i) for i in server.client.smembers(batch_run_key(batch.id, "sent"))}
        assert len(sent) == len(outputs) and len(sent) < 40
        never_sent = set(range(40)) - sent
        assert not any(server.client.exists(event_log_key(f"{batch.id}-{i}")) for i in never_sent)
    finally:
        gateway.stop()


def test_a_killed_runner_is_replaced_and_every_line_appears_once(own_stack, workdir) -> None:
    server, env, _ = own_stack
    first = Gateway(env, workdir)
    second = None
    try:
        client = _sdk(first)
        source = client.files.create(file=("in.jsonl", _jsonl(_slow_lines(24, 10))), purpose="batch")
        batch = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert eventually(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 4, timeout=60)
        owner = server.client.get(batch_run_key(batch.id, "lease")).decode()
        assert owner.split(":")[1] == str(first.pid)  # the only gateway: it runs the batch
        first.stop(signal.SIGKILL)  # mid-batch, lines in flight
        second = Gateway(env, workdir)
        client = _sdk(second)
        deadline = time.monotonic() + 120
        while (final := client.batches.retrieve(batch.id)).status not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.3)
        assert final.status == "completed", final
        output = _lines_of(client, final.output_file_id)
        assert sorted(line["custom_id"] for line in output) == sorted(f"s{i}" for i in range(24))  # each once
        assert final.request_counts.completed == 24 and final.request_counts.failed == 0
        assert server.client.get(batch_run_key(batch.id, "lease")).decode().split(":")[1] == str(second.pid)
    finally:
        first.stop(signal.SIGKILL)
        if second is not None:
            second.stop()
