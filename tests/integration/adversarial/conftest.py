"""The adversarial suite's own stack: its own redis-server, models file and workers, so that what
these tests do to a server (fill its memory, starve its Redis, hold its connections) cannot leak
into the rest of the suite.

Every test here reproduces a way one client once hurt the service or other clients (issue 11),
then checks with `assert_serving` that a normal request still answers and every slot is free.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import redis

from protocol import slots_key
from tests.integration.processes import Gateway, RedisServer, Worker, eventually, live_worker, stack_env
from tests.tiny_models import write_models_file

# tests/tiny_models.py: 2 layers x (keys, values) x 2 KV heads x head size 8 x 4 bytes (float32)
TINY_KV_BYTES_PER_TOKEN = 256
KV_BUDGET = 200  # token positions the tiny-bounded worker may hold: alone, a request fits; two big ones do not
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="package")
def hostile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adversarial")


@pytest.fixture(scope="package")
def hostile_models(hostile_dir: Path, tiny_model_dir: Path) -> Path:
    from tests.conftest import DEFAULT_MODEL_FILE
    from tests.integration.conftest import _repo_entry

    return write_models_file(hostile_dir / "models.yaml", {
        # the default model, with a small prefix cache so that its bound is reached
        "smollm2-135m": {**_repo_entry("smollm2-135m"), "path": DEFAULT_MODEL_FILE, "prefix_cache_mb": 64},
        "tiny-bounded": {"adapter": "hf-causal", "path": tiny_model_dir, "slots": 4, "dtype": "float32",
                         "kv_cache_mb": KV_BUDGET * TINY_KV_BYTES_PER_TOKEN / 2**20},
        "echo-slow": {"adapter": "echo", "slots": 4, "options": {"step_delay": 0.05}},
    })  # fmt: skip


@pytest.fixture(scope="package")
def hostile_redis(hostile_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(hostile_dir)
    yield server
    server.stop()


@pytest.fixture(scope="package")
def hostile_env(hostile_redis: RedisServer, hostile_models: Path) -> dict[str, str]:
    # keep-alives every half second, so a gateway with a short idle timeout can tell busy from dead
    return stack_env(hostile_redis.url, hostile_models, QUEUECHAT_KEEPALIVE_INTERVAL="0.5")


@pytest.fixture(scope="package")
def echo_worker(hostile_env, hostile_dir, hostile_redis) -> Iterator[Worker]:
    with live_worker(["echo-slow"], hostile_env, hostile_dir, hostile_redis.client) as worker:
        yield worker


@pytest.fixture(scope="package")
def hostile_gateway(hostile_env, hostile_dir, echo_worker) -> Iterator[Gateway]:
    server = Gateway(hostile_env, hostile_dir)
    yield server
    server.stop()


def sdk(gateway: Gateway, timeout: float = 60) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0, timeout=timeout)


def assert_serving(gateway: Gateway, redis_client: redis.Redis, model: str, *workers: Worker) -> None:
    """After an attack: the workers live, a normal request answers, every slot is free again."""
    assert all(w.popen.poll() is None for w in workers), "a worker died"
    reply = sdk(gateway).chat.completions.create(model=model, messages=HI, max_tokens=3)
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1

    def all_free() -> bool:
        slots = [v.decode().split("/") for v in redis_client.hgetall(slots_key(model)).values()]
        return bool(slots) and all(free == total for free, total in slots)

    assert eventually(all_free, 10), f"slots still taken: {redis_client.hgetall(slots_key(model))}"
