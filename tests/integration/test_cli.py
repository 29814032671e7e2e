"""The `queuechat` command against the test stack, and Flower (started by `queuechat flower`)
counting a model's queue while no worker serves it."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.integration.processes import BIN, REPO, Flower, Process, Worker, free_port, pause_queue, wait_for

QUEUECHAT = str(BIN / "queuechat")


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([QUEUECHAT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_models_lists_the_models_file_and_live_workers(env, workers) -> None:
    result = run(["models"], env)
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("tiny-a "))
    assert "hf-causal" in line and f"{workers['tiny-a'].name} (8/8)" in line
    assert next(l for l in result.stdout.splitlines() if l.startswith("tiny-idle ")).split()[3] == "none"


def test_chat_once_streams_an_answer(env, gateway, client) -> None:
    args = ["--url", f"{gateway.base_url}/v1", "--max-tokens", "5", "--temperature", "0", "--once", "Hello"]
    result = run(["chat", "tiny-a", *args], env)
    assert result.returncode == 0, result.stderr
    expected = client.chat.completions.create(model="tiny-a", messages=[{"role": "user", "content": "Hello"}],
                                              max_tokens=5, temperature=0).choices[0].message.content  # fmt: skip
    assert result.stdout == f"tiny-a> {expected}\n"


def test_chat_reports_an_unknown_model_and_fails(env, gateway) -> None:
    result = run(["chat", "no-such-model", "--url", f"{gateway.base_url}/v1", "--once", "Hello"], env)
    assert result.returncode == 1 and "no-such-model" in result.stderr


def test_responses_wait_get_and_cancel(env, gateway, client, workers, celery_control) -> None:
    url = ["--url", f"{gateway.base_url}/v1"]
    job = client.responses.create(model="tiny-a", input="Hello", max_output_tokens=6, temperature=0, background=True)
    waited = run(["responses", "wait", job.id, *url, "--interval", "0.1"], env)
    assert waited.returncode == 0, waited.stderr
    final = client.responses.retrieve(job.id)
    assert waited.stdout == f"{final.output_text}\n"
    got = run(["responses", "get", job.id, *url], env)
    assert got.returncode == 0 and json.loads(got.stdout)["status"] == final.status
    missing = run(["responses", "get", "resp_missing", *url], env)
    assert missing.returncode == 1 and "not found" in missing.stderr
    worker = workers["tiny-b"].name
    pause_queue(celery_control, "tiny-b", worker)
    try:  # the job waits in the queue: cancelled there, and dropped when a worker takes it
        stuck = client.responses.create(model="tiny-b", input="x", background=True)
        cancelled = run(["responses", "cancel", stuck.id, *url], env)
        assert cancelled.returncode == 1 and json.loads(cancelled.stdout)["status"] == "cancelled"
    finally:
        assert celery_control.add_consumer("tiny-b", destination=[worker], reply=True, timeout=5)
    assert client.responses.retrieve(stuck.id).status == "cancelled"


def test_batch_submit_follows_the_batch_and_results_prints_its_output(env, gateway, workdir) -> None:
    url = ["--url", f"{gateway.base_url}/v1"]
    requests = workdir / "cli-batch.jsonl"
    requests.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 3})
                                + "\n" for i in range(6)))  # fmt: skip
    submitted = run(["batch", "submit", str(requests), "--model", "tiny-a", *url], env, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.split()[0]
    assert batch_id.startswith("batch_") and "completed: 6 completed, 0 failed" in submitted.stderr
    status = run(["batch", "status", batch_id, *url], env)
    assert json.loads(status.stdout)["request_counts"] == {"completed": 6, "failed": 0, "total": 6}
    results = run(["batch", "results", batch_id, *url], env)
    lines = [json.loads(line) for line in results.stdout.splitlines()]
    assert [line["custom_id"] for line in lines] == [f"line-{i}" for i in range(1, 7)]
    assert all(line["response"]["status_code"] == 200 for line in lines)
    no_errors = run(["batch", "results", batch_id, "--errors", *url], env)
    assert no_errors.returncode == 1 and "no error file" in no_errors.stderr


def test_worker_and_serve_start_a_working_stack(env, workdir, redis_server, client) -> None:
    worker = Process([QUEUECHAT, "worker", "--model", "echo-fast", "--name", "cli-echo@testhost"],
                     workdir / "cli-worker.log", env)  # fmt: skip
    port = free_port()
    gateway = Process([QUEUECHAT, "serve", "--port", str(port)], workdir / "cli-gateway.log", env)
    try:
        from protocol import live_workers_key

        wait_for(lambda: redis_server.client.zscore(live_workers_key("echo-fast"), "cli-echo@testhost") is not None,
                 "the CLI worker", 60, worker)  # fmt: skip
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200, "the CLI gateway", 30, gateway)
        mine = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        reply = mine.chat.completions.create(model="echo-fast", messages=[{"role": "user", "content": "abc"}], max_tokens=3)
        assert reply.choices[0].message.content == "abc"
    finally:
        gateway.stop()
        worker.stop()


@pytest.mark.parametrize("command", ["bench", "soak", "flower"])
def test_delegated_commands_show_their_help(env, command: str) -> None:
    result = run([command, "--help"], env)
    assert result.returncode == 0 and "usage" in result.stdout.lower()


@pytest.mark.parametrize("command", [[QUEUECHAT, "flower"]])  # a plain `celery -A workers flower` lists seen queues only
def test_flower_counts_a_queue_whose_worker_is_gone_and_shows_no_prompts(command, env, workdir, redis_server, gateway, client,
                                                                        celery_control) -> None:  # fmt: skip
    flower = Flower(env, workdir, program=command)
    api = f"{flower.base_url}/api"
    worker = Worker(["echo-slow"], env, workdir)
    try:
        wait_for(lambda: httpx.get(f"{api}/workers", timeout=5).status_code == 200, "flower", 60, flower)
        secret = "my secret prompt 4711"

        def task_info(request_id: str) -> dict:
            response = httpx.get(f"{api}/task/info/{request_id}", timeout=5)
            return response.json() if response.status_code == 200 else {}

        def a_task_flower_recorded() -> dict:
            """Flower's web API answers before its event receiver listens: ask until it records one."""
            for _ in range(10):
                raw = client.chat.completions.with_raw_response.create(
                    model="tiny-a", messages=[{"role": "user", "content": secret}], max_tokens=2)  # fmt: skip
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline:
                    if (task := task_info(raw.headers["x-request-id"])).get("name") and task.get("args"):
                        return task
                    time.sleep(0.2)
            raise AssertionError(f"flower recorded none of 10 tasks\n{flower.log_tail()}")

        task = a_task_flower_recorded()
        assert task["name"] == "queuechat.generate"
        assert "tiny-a: messages=1" in task["args"] and secret not in str(task)
        worker.wait_live(redis_server.client)
        assert celery_control.cancel_consumer("echo-slow", destination=[worker.name], reply=True, timeout=5)
        with ThreadPoolExecutor(3) as pool:
            waiting = [pool.submit(client.chat.completions.create, model="echo-slow", max_tokens=2,
                                   messages=[{"role": "user", "content": "queued"}]) for _ in range(3)]  # fmt: skip
            wait_for(lambda: redis_server.client.llen("echo-slow") == 3, "three queued tasks", 10)
            worker.stop(signal.SIGKILL)  # the model's only worker is gone; its tasks wait in Redis

            def flower_counts_three() -> bool:
                queues = httpx.get(f"{api}/queues/length", timeout=5).json()["active_queues"]
                return {"name": "echo-slow", "messages": 3} in queues

            wait_for(flower_counts_three, "flower to count the echo-slow queue", 20, flower)
            for future in waiting:  # the clients got 503s: no worker serves the model
                with pytest.raises(openai.APIStatusError):
                    future.result(timeout=30)
    finally:
        worker.stop(signal.SIGKILL)
        flower.stop()
        drain = Worker(["echo-slow"], env, workdir)  # the left tasks are dropped (their clients left)
        try:
            wait_for(lambda: redis_server.client.llen("echo-slow") == 0, "the echo-slow queue to drain", 30, drain)
        finally:
            drain.stop()
