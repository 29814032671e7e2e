"""A worker never pretends: a model that fails to load (with any exception, as remote code
raises) is reported with its name and cause; a worker with other models keeps serving them and
says which failed (/v1/models, /metrics, `queuechat models`, a 503 for its requests); a worker
left with nothing exits non-zero."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch
from safetensors.torch import save_file

from protocol import failures_key, live_workers_key
from tests.integration.processes import BIN, Worker, stack_env, wait_for
from tests.tiny_models import write_tiny_tokenizer

_BROKEN_MODELING = '''
from transformers import PretrainedConfig, PreTrainedModel


class BrokenConfig(PretrainedConfig):
    model_type = "chatglm"


class BrokenModel(PreTrainedModel):
    config_class = BrokenConfig

    def __init__(self, config):
        raise TypeError("'property' object cannot be interpreted as an integer")
'''


def _broken_remote_code(folder: Path) -> Path:
    """A remote-code checkpoint whose model class raises TypeError while it is built."""
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_tokenizer(folder, template=None)
    save_file({"unused": torch.zeros(1)}, str(folder / "model.safetensors"))  # found; the class fails first
    (folder / "modeling_broken.py").write_text(_BROKEN_MODELING)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "chatglm", "architectures": ["BrokenModel"],
        "auto_map": {"AutoConfig": "modeling_broken.BrokenConfig", "AutoModel": "modeling_broken.BrokenModel"},
    }))  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def failing_env(workdir: Path, redis_server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("load-failures")
    models = {
        "fine-echo": {"adapter": "echo", "slots": 2},
        "broken-glm": {"adapter": "chatglm", "path": str(_broken_remote_code(folder / "broken")),
                       "trust_remote_code": True},
    }  # fmt: skip
    models_file = folder / "models.yaml"
    models_file.write_text(json.dumps({"models": models}))
    return stack_env(redis_server.url, models_file)


@pytest.fixture(scope="module")
def half_broken(failing_env, workdir, redis_server) -> Iterator[Worker]:
    worker = Worker(["fine-echo", "broken-glm"], failing_env, workdir)
    try:
        wait_for(lambda: redis_server.client.zcard(live_workers_key("fine-echo")) > 0, "fine-echo live", 120, worker)
        wait_for(lambda: redis_server.client.hlen(failures_key("broken-glm")) > 0, "the failure record", 10, worker)
        yield worker
    finally:
        worker.stop(signal.SIGTERM)


def test_a_worker_keeps_its_other_models_and_says_which_failed(half_broken, gateway, client: openai.OpenAI,
                                                                failing_env, celery_control) -> None:  # fmt: skip
    log = half_broken.log_tail(20_000)
    assert "model broken-glm failed to load: TypeError: 'property' object" in log
    assert log.count("failed to load: TypeError") == 1, "reported once"
    answer = client.chat.completions.create(model="fine-echo", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=2)  # fmt: skip
    assert answer.choices[0].finish_reason == "length"

    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="broken-glm", messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 503 and failed.value.body["code"] == "model_failed"
    assert "failed to load on worker" in failed.value.body["message"] and "TypeError" in failed.value.body["message"]

    listed = {m["id"]: m for m in httpx.get(f"{gateway.base_url}/v1/models").json()["data"]}
    assert listed["fine-echo"]["status"] == "ready"
    assert listed["broken-glm"]["status"] == "failed" and listed["broken-glm"]["capabilities"] == []
    assert "TypeError" in listed["broken-glm"]["status_reason"]
    metrics = httpx.get(f"{gateway.base_url}/metrics").text
    assert f'queuechat_model_load_failed{{model="broken-glm",worker="{half_broken.name}"}} 1.0' in metrics

    shown = subprocess.run([str(BIN / "queuechat"), "models"], env=failing_env, capture_output=True, text=True,
                           timeout=60, check=True).stdout  # fmt: skip
    assert f"broken-glm failed to load on {half_broken.name}: TypeError" in shown

    stats = celery_control.inspect(destination=[half_broken.name], timeout=5).stats()  # Flower's Stats tab
    mine = stats[half_broken.name]["queuechat"]
    assert mine["serving"] == ["fine-echo"] and "TypeError" in mine["failed_to_load"]["broken-glm"]


def test_a_worker_left_with_no_model_exits_non_zero(failing_env, workdir) -> None:
    worker = Worker(["broken-glm"], failing_env, workdir)
    try:
        code = worker.popen.wait(120)
    finally:
        worker.stop(signal.SIGKILL)
    assert code != 0
    log = worker.log_tail(20_000)
    assert "worker cannot start" in log and "broken-glm: TypeError" in log
