"""Real redis-server, real Celery workers (subprocesses), real uvicorn gateway, official openai SDK.

One stack per test session: tiny-a and tiny-b are tiny random models, each served by its own
worker; tiny-idle is in the models file but no worker serves it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import DEFAULT_MODEL_FILE, EMBEDDING_MODEL_DIR
from tests.integration.processes import Gateway, RedisServer, Worker, live_worker, stack_env
from tests.tiny_models import write_models_file


def _repo_entry(name: str) -> dict:
    import yaml

    from protocol.settings import DEFAULT_MODELS_FILE

    return dict(yaml.safe_load(DEFAULT_MODELS_FILE.read_text())["models"][name])


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny local models of the other families (remote-code ChatGLM, native GLM-4, an encoder, a
    three-class BERT classifier and a cross-encoder)."""
    from tests.tiny_families import (
        make_tiny_chatglm,
        make_tiny_classifier,
        make_tiny_cross_encoder,
        make_tiny_encoder,
        make_tiny_glm4,
    )

    return {
        "chatglm": make_tiny_chatglm(tmp_path_factory.mktemp("chatglm")),
        "glm4": make_tiny_glm4(tmp_path_factory.mktemp("glm4")),
        "encoder": make_tiny_encoder(tmp_path_factory.mktemp("encoder")),
        "classifier": make_tiny_classifier(tmp_path_factory.mktemp("classifier")),
        "cross_encoder": make_tiny_cross_encoder(tmp_path_factory.mktemp("cross-encoder")),
    }


@pytest.fixture(scope="session")
def models_file(workdir: Path, tiny_model_dir: Path, tiny_model_dir_b: Path, family_dirs: dict[str, Path]) -> Path:
    return write_models_file(
        workdir / "models.yaml",
        {
            "tiny-a": {"adapter": "hf-causal", "path": tiny_model_dir, "slots": 8},
            "tiny-b": {"adapter": "hf-causal", "path": tiny_model_dir_b, "slots": 8},
            "tiny-idle": {"adapter": "hf-causal", "path": tiny_model_dir, "slots": 8},
            # as the repo's models.yaml has it (defaults included), with an absolute path
            "smollm2-135m": {**_repo_entry("smollm2-135m"), "path": DEFAULT_MODEL_FILE},
            # model-free and slow (50 ms a step): for cancellation and fault tests
            "echo-slow": {"adapter": "echo", "slots": 4, "options": {"step_delay": 0.05}},
            # model-free and instant: repeats the conversation's text (tool-call parsing tests)
            "echo-fast": {"adapter": "echo", "slots": 4},
            # a worker that goes silent mid-request (4 s a step): for timeout tests
            "echo-stuck": {"adapter": "echo", "slots": 2, "options": {"step_delay": 4.0}},
            # adapters chosen automatically from each folder's config.json / modules.json
            "tiny-chatglm": {"path": family_dirs["chatglm"], "trust_remote_code": True},
            "tiny-glm4": {"path": family_dirs["glm4"], "slots": 4},
            "tiny-embed": {"path": family_dirs["encoder"], "slots": 2},
            "tiny-classifier": {"path": family_dirs["classifier"], "slots": 2},  # BertForSequenceClassification
            "tiny-cross-encoder": {"path": family_dirs["cross_encoder"], "slots": 2},  # the same, one label
            "all-minilm-l6-v2": {**_repo_entry("all-minilm-l6-v2"), "path": EMBEDDING_MODEL_DIR},
        },
    )


@pytest.fixture(scope="session")
def env(redis_server: RedisServer, models_file: Path, workdir: Path) -> dict[str, str]:
    return stack_env(redis_server.url, models_file, QUEUECHAT_FILES_DIR=str(workdir / "files"))


@pytest.fixture(scope="session")
def workers(env: dict[str, str], workdir: Path, redis_server: RedisServer) -> Iterator[dict[str, Worker]]:
    started = {name: Worker([name], env, workdir) for name in ("tiny-a", "tiny-b")}
    try:
        for worker in started.values():
            worker.wait_live(redis_server.client)
        yield started
    finally:
        for worker in started.values():
            worker.stop()


@pytest.fixture(scope="session")
def gateway(env: dict[str, str], workdir: Path, workers: dict[str, Worker]) -> Iterator[Gateway]:
    server = Gateway(env, workdir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture
def async_client(gateway: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked after_suite inspect what the others left behind: run them last."""
    items.sort(key=lambda item: item.get_closest_marker("after_suite") is not None)


_STACK_TESTS_RUN = pytest.StashKey[int]()


def pytest_runtest_call(item: pytest.Item) -> None:
    """Count the tests (set up without error) that used the shared stack before the after_suite ones."""
    if "redis_server" in item.fixturenames and item.get_closest_marker("after_suite") is None:
        item.config.stash[_STACK_TESTS_RUN] = item.config.stash.get(_STACK_TESTS_RUN, 0) + 1


def pytest_runtest_setup(item: pytest.Item) -> None:
    """An after_suite test run alone would inspect a stack nothing has used and pass vacuously:
    skip it (before its fixtures start the stack) unless other tests used the stack first."""
    if item.get_closest_marker("after_suite") is not None and not item.config.stash.get(_STACK_TESTS_RUN, 0):
        pytest.skip("after_suite: no other test used the shared stack in this session, so nothing was left "
                    "behind to inspect; run it together with the rest of tests/integration")


@pytest.fixture(scope="session")
def celery_control(redis_server: RedisServer) -> Iterator[object]:
    """Celery remote control (a `celery.app.control.Control`) of the stack's workers: pause/resume
    a queue's consumer, inspect.  From a plain sending app on the shared Redis, closed at the end."""
    import celery

    from protocol.settings import QueueSettings

    app = celery.Celery("queuechat-tests", set_as_current=False)
    app.conf.update(QueueSettings(redis_url=redis_server.url).celery_conf())
    try:
        yield app.control
    finally:
        app.close()


@pytest.fixture(scope="module")
def slow_worker(env: dict[str, str], workdir: Path, redis_server: RedisServer) -> Iterator[Worker]:
    """A worker for echo-slow (50 ms a step) for the tests of one module, stopped after them."""
    with live_worker(["echo-slow"], env, workdir, redis_server.client) as worker:
        yield worker


@pytest.fixture(scope="module")
def other_gateway(env: dict[str, str], workdir: Path, slow_worker: Worker) -> Iterator[Gateway]:
    """A second gateway on the shared stack (what one gateway started, the other can serve)."""
    server = Gateway(env, workdir)
    yield server
    server.stop()
