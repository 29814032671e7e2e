"""Attacks through the model: prompts that would fill the worker's memory, sampling parameters
that break the arithmetic, seeds beyond 64 bits, requests too big for the KV cache, text held
back so long that the stream looks dead.  Each must fail alone, or not fail at all."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import psutil
import pytest
import torch

from adapters.hf_causal import pick_dtype
from protocol import stats_key
from tests.integration.adversarial.conftest import KV_BUDGET, assert_serving, sdk
from tests.integration.processes import Gateway, Worker, live_worker

pytestmark = pytest.mark.default_model

WORDS = "river stone light paper market window garden silver engine winter orange letter planet music".split()
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]


@pytest.fixture(scope="module")
def smollm(hostile_env, hostile_dir, hostile_redis) -> Iterator[Worker]:
    with live_worker(["smollm2-135m"], hostile_env, hostile_dir, hostile_redis.client, timeout=240) as worker:
        yield worker


@pytest.fixture(scope="module")
def bounded(hostile_env, hostile_dir, hostile_redis) -> Iterator[Worker]:
    with live_worker(["tiny-bounded"], hostile_env, hostile_dir, hostile_redis.client) as worker:
        yield worker


def _rss_mb(worker: Worker) -> float:
    return psutil.Process(worker.popen.pid).memory_info().rss / 2**20


def _stats(redis_client, model: str) -> dict:
    return json.loads(next(iter(redis_client.hgetall(stats_key(model)).values())))


def _words(count: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(count))


def _poll(read, timeout: float = 5.0):
    """`read()` once it gives something truthy (heartbeats come every second)."""
    deadline = time.monotonic() + timeout
    while not (value := read()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def test_long_prompts_grow_the_worker_by_its_cache_bound_not_by_every_prefix(hostile_gateway, hostile_redis,
                                                                              smollm) -> None:  # fmt: skip
    """A 1,200-word prompt once added 2 GB to the worker (a KV copy of every 16-token prefix), and
    two of 3-4k tokens 23 GB; now what stays is the prefix cache, within its bound (64 MB here)."""
    client = sdk(hostile_gateway, timeout=120)
    client.completions.create(model="smollm2-135m", prompt="Hello", max_tokens=2)  # warm
    idle = _rss_mb(smollm)
    reply = client.completions.create(model="smollm2-135m", prompt=_words(1200, 0), max_tokens=1)
    chat = [{"role": "user" if i % 2 == 0 else "assistant", "content": _words(3, i)} for i in range(511)]
    chat_reply = client.chat.completions.create(model="smollm2-135m", messages=chat, max_tokens=1)
    tokens = reply.usage.prompt_tokens + chat_reply.usage.prompt_tokens
    grown = _rss_mb(smollm) - idle
    stats = _poll(lambda: (s := _stats(hostile_redis.client, "smollm2-135m")).get("prefix_cache_bytes") and s)
    print(f"{tokens} prompt tokens: worker RSS {idle:.0f} -> {idle + grown:.0f} MB; "
          f"prefix cache {stats['prefix_cache_bytes'] / 2**20:.0f} MB")  # fmt: skip
    itemsize = torch.empty((), dtype=pick_dtype("auto", torch.device("cpu"))).element_size()  # the worker's dtype
    assert stats["kv_bytes_per_token"] == 30 * 2 * 3 * 64 * itemsize  # SmolLM2-135M: layers x (keys, values) x heads x dim
    assert 0 < stats["prefix_cache_bytes"] <= stats["prefix_cache_limit_bytes"] == 64 * 2**20
    assert grown < 0.5 * idle + 64, f"the worker grew by {grown:.0f} MB"
    assert_serving(hostile_gateway, hostile_redis.client, "smollm2-135m", smollm)


@pytest.mark.parametrize("degenerate", [{"temperature": 1e-40}, {"temperature": 5e-324},
                                        {"temperature": 1.0, "top_p": 1e-300}])
def test_degenerate_sampling_cannot_fail_the_other_streams_in_its_batch(hostile_gateway, hostile_redis, smollm,
                                                                        degenerate: dict) -> None:  # fmt: skip
    client = sdk(hostile_gateway)
    streams = [client.chat.completions.create(model="smollm2-135m", messages=STORY, max_tokens=60, temperature=0.7,
                                              seed=i, stream=True) for i in range(3)]  # fmt: skip
    for stream in streams:
        next(stream)  # all three are decoding
    odd = client.chat.completions.create(model="smollm2-135m", messages=STORY, max_tokens=8, **degenerate)
    assert odd.usage.completion_tokens >= 1
    for stream in streams:
        finish = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]
        assert finish in (["length"], ["stop"])
    assert_serving(hostile_gateway, hostile_redis.client, "smollm2-135m", smollm)


def test_an_out_of_range_seed_is_a_400_and_every_int64_seed_works(hostile_gateway, hostile_redis, smollm) -> None:
    client = sdk(hostile_gateway, timeout=20)  # it once hung for 60 s, then 503
    for seed in (2**70, -(2**63) - 1):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="smollm2-135m", messages=STORY, max_tokens=3, temperature=1, seed=seed)
        assert err.value.body["param"] == "seed"
    for seed in (2**63 - 1, -(2**63)):  # with n=2 the second choice samples with seed + 1: past int64
        reply = client.chat.completions.create(model="smollm2-135m", messages=STORY, max_tokens=3, temperature=1,
                                               seed=seed, n=2)  # fmt: skip
        assert len(reply.choices) == 2
    assert_serving(hostile_gateway, hostile_redis.client, "smollm2-135m", smollm)


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_too_big_for_the_kv_cache_is_a_400_naming_max_tokens(hostile_gateway, hostile_redis, bounded,
                                                                        stream: bool) -> None:  # fmt: skip
    body = {"model": "tiny-bounded", "prompt": "The capital of France is", "max_tokens": KV_BUDGET, "stream": stream}
    response = httpx.post(f"{hostile_gateway.base_url}/v1/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "max_tokens" and f"at most {KV_BUDGET}" in error["message"], error
    assert_serving(hostile_gateway, hostile_redis.client, "tiny-bounded", bounded)


def test_requests_that_do_not_fit_together_wait_their_turn_and_all_answer(hostile_gateway, hostile_redis,
                                                                          bounded) -> None:  # fmt: skip
    """Each needs ~160 of the 200 token positions: the second starts only once the first is done
    (each yields 150 tokens: EOS, token 2 of the tiny tokenizer, is biased away)."""
    client = sdk(hostile_gateway)

    def timed(i: int) -> tuple[float, float]:
        stream = client.completions.create(model="tiny-bounded", prompt=f"Hello {i}", max_tokens=150, temperature=0,
                                           logit_bias={"2": -100}, stream=True)  # fmt: skip
        times = [time.monotonic() for chunk in stream if chunk.choices and chunk.choices[0].text]
        return times[0], times[-1]

    with ThreadPoolExecutor(2) as pool:
        (_, first_ends), (second_starts, _) = sorted(pool.map(timed, range(2)))
    assert second_starts > first_ends - 0.05, "both ran at once: their KV would not have fit"
    assert_serving(hostile_gateway, hostile_redis.client, "tiny-bounded", bounded)


@pytest.fixture(scope="module")
def impatient(hostile_env, hostile_dir, echo_worker) -> Iterator[Gateway]:
    server = Gateway({**hostile_env, "QUEUECHAT_IDLE_TIMEOUT": "2"}, hostile_dir)
    yield server
    server.stop()


def test_text_held_back_by_a_long_stop_sequence_does_not_look_like_a_dead_worker(impatient, hostile_redis,
                                                                               echo_worker) -> None:  # fmt: skip
    """Every generated 'a' may be the start of the 200,000-character stop string, so nothing is
    sent for 4 s (80 steps of 50 ms), twice the gateway's idle timeout: keep-alives carry it."""
    started = time.monotonic()
    reply = sdk(impatient).chat.completions.create(
        model="echo-slow", messages=[{"role": "user", "content": "aaaa"}], max_tokens=80, stop=["a" * 200_000]
    )
    assert reply.choices[0].message.content == "a" * 80 and reply.choices[0].finish_reason == "length"
    assert time.monotonic() - started > 3  # it really was silent for longer than the idle timeout
    assert_serving(impatient, hostile_redis.client, "echo-slow", echo_worker)
