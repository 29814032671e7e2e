"""GET /metrics moves under load; every request leaves one log line with its id and timings."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.processes import Worker

MESSAGES = [{"role": "user", "content": "Tell me about queues."}]


def scrape(gateway) -> dict[tuple[str, tuple], float]:
    response = httpx.get(f"{gateway.base_url}/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}  # fmt: skip


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_request_metrics_move_with_traffic(gateway, client: openai.OpenAI) -> None:
    before = scrape(gateway)
    reply = client.chat.completions.create(model="tiny-a", messages=MESSAGES, temperature=0, max_tokens=8)
    for _ in client.chat.completions.create(model="tiny-a", messages=MESSAGES, temperature=0, max_tokens=8, stream=True):
        pass
    try:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    except openai.NotFoundError:
        pass
    after = scrape(gateway)
    ok = {"endpoint": "/v1/chat/completions", "model": "tiny-a", "status": "200"}
    assert value(after, "queuechat_http_requests_total", **ok) - value(before, "queuechat_http_requests_total", **ok) == 2
    missing = {"endpoint": "/v1/chat/completions", "model": "other", "status": "404"}
    assert value(after, "queuechat_http_requests_total", **missing) >= 1
    grew = lambda name, **l: value(after, name, **l) - value(before, name, **l)  # noqa: E731
    assert grew("queuechat_generated_tokens_total", model="tiny-a") == 2 * reply.usage.completion_tokens
    assert grew("queuechat_time_to_first_token_seconds_count", model="tiny-a") == 2
    assert grew("queuechat_queue_wait_seconds_count", model="tiny-a") == 2
    assert grew("queuechat_inter_token_latency_seconds_count", model="tiny-a") >= 2
    assert value(after, "queuechat_active_requests", model="tiny-a") == 0
    assert value(after, "queuechat_live_workers", model="tiny-a") == 1
    assert value(after, "queuechat_slots", model="tiny-a") == 8
    assert value(after, "queuechat_live_workers", model="tiny-idle") == 0


def test_worker_engine_counters_arrive_with_heartbeats(gateway, workers, client: openai.OpenAI) -> None:
    worker = workers["tiny-b"].name
    before = value(scrape(gateway), "queuechat_worker_tokens_total", model="tiny-b", worker=worker)
    reply = client.chat.completions.create(model="tiny-b", messages=MESSAGES, temperature=0, max_tokens=6)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = value(scrape(gateway), "queuechat_worker_tokens_total", model="tiny-b", worker=worker)
        if now - before >= reply.usage.completion_tokens:
            break
        time.sleep(0.3)
    assert now - before == reply.usage.completion_tokens
    samples = scrape(gateway)
    for name in ("queuechat_worker_kv_cache_budget_tokens", "queuechat_worker_prefix_cache_limit_bytes"):
        assert value(samples, name, model="tiny-b", worker=worker) > 0, name
    assert value(samples, "queuechat_worker_prefix_cache_bytes", model="tiny-b", worker=worker) > 0  # its prompt
    assert value(samples, "queuechat_worker_waiting_requests", model="tiny-b", worker=worker) == 0


def test_queue_depth_and_active_requests_show_a_backlog(gateway, env, workdir, redis_server, client,
                                                        celery_control) -> None:  # fmt: skip
    worker = Worker(["echo-slow"], env, workdir)
    control = celery_control
    try:
        worker.wait_live(redis_server.client)
        assert control.cancel_consumer("echo-slow", destination=[worker.name], reply=True, timeout=5)
        with ThreadPoolExecutor(3) as pool:
            waiting = [pool.submit(client.chat.completions.create, model="echo-slow", messages=MESSAGES, max_tokens=2)
                       for _ in range(3)]  # fmt: skip
            deadline = time.monotonic() + 10
            while value(scrape(gateway), "queuechat_queue_depth", model="echo-slow") < 3 and time.monotonic() < deadline:
                time.sleep(0.2)
            samples = scrape(gateway)
            assert value(samples, "queuechat_queue_depth", model="echo-slow") == 3
            assert value(samples, "queuechat_active_requests", model="echo-slow") == 3
            assert value(samples, "queuechat_subscribed_channels") >= 3  # one channel each, one connection
            assert samples[("queuechat_subscriber_connection_losses_total", ())] == 0
            control.add_consumer("echo-slow", destination=[worker.name], reply=True, timeout=5)
            assert all(f.result(timeout=30).choices[0].finish_reason == "length" for f in waiting)
        assert value(scrape(gateway), "queuechat_queue_depth", model="echo-slow") == 0
    finally:
        worker.stop(signal.SIGKILL)


def test_each_request_logs_one_line_with_its_id_and_timings(gateway, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="tiny-a", messages=MESSAGES, max_tokens=4)
    request_id = raw.headers["x-request-id"]
    deadline = time.monotonic() + 5
    while request_id not in gateway.log_tail(50_000) and time.monotonic() < deadline:
        time.sleep(0.1)
    [line] = [l for l in gateway.log_tail(50_000).splitlines() if f"request {request_id} " in l]
    reply = raw.parse()
    assert f"model=tiny-a outcome={reply.choices[0].finish_reason} " in line
    assert f"prompt_tokens={reply.usage.prompt_tokens} tokens={reply.usage.completion_tokens} " in line
    assert "queue_wait=" in line and "ttft=" in line and "duration=" in line
