"""Two models, two workers: each request reaches the queue named after its model."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from tests.integration import reference

MESSAGES = [{"role": "user", "content": "Which worker answers this?"}]


def test_each_model_answers_from_its_own_worker(client, tiny_model_dir, tiny_model_dir_b) -> None:
    refs = {
        "tiny-a": reference.greedy(tiny_model_dir, messages=MESSAGES, max_tokens=16),
        "tiny-b": reference.greedy(tiny_model_dir_b, messages=MESSAGES, max_tokens=16),
    }
    assert refs["tiny-a"].text != refs["tiny-b"].text, "the two tiny models must differ for this test to mean much"

    def ask(model: str) -> tuple[str, str]:
        reply = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, max_tokens=16)
        return model, reply.choices[0].message.content

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, ["tiny-a", "tiny-b"] * 3))
    for model, text in answers:
        assert text == refs[model].text, model


def test_backlog_waits_in_the_redis_list_named_after_the_model(
    client, workers, redis_server, celery_control
) -> None:
    """Pause tiny-b's consumer: its request waits, visible, in Redis list 'tiny-b' (not 'tiny-a')."""
    control = celery_control
    worker_b = workers["tiny-b"].name
    r = redis_server.client
    reply = control.cancel_consumer("tiny-b", destination=[worker_b], reply=True, timeout=5)
    assert reply, "the worker answered the remote-control request"
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                client.chat.completions.create, model="tiny-b", messages=MESSAGES, temperature=0, max_tokens=4
            )
            deadline = time.monotonic() + 10
            while r.llen("tiny-b") == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert r.llen("tiny-b") == 1
            assert r.llen("tiny-a") == 0
            assert not pending.done()
            control.add_consumer("tiny-b", destination=[worker_b], reply=True, timeout=5)
            answer = pending.result(timeout=60)
        assert answer.choices[0].message.content
        assert r.llen("tiny-b") == 0
    finally:
        control.add_consumer("tiny-b", destination=[worker_b], reply=True, timeout=5)


def test_worker_pool_has_one_thread_per_batch_slot(workers, celery_control) -> None:
    """With prefetch 1 and late acks, a worker then holds only as many tasks as it can decode."""
    inspect = celery_control.inspect(timeout=5)
    stats = inspect.stats() or {}
    for worker in workers.values():
        pool = stats[worker.name]["pool"]
        assert pool["max-concurrency"] == 8  # the models file's default slots for tiny-a / tiny-b
        assert stats[worker.name]["prefetch_count"] == 8
