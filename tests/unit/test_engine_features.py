"""Engine capabilities: which features a job asks for (and the parameter that asked), the models
file's engine switch, and the gateway refusing, before anything is queued, what a model's engine
says (in its workers' cards) it cannot give."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fakeredis import FakeAsyncRedis as FakeRedis

from gateway.errors import InvalidRequest
from gateway.registry import Registry
from gateway.relay import Relay
from protocol import GENERATES, ChatMessage, Constraint, GenerateJob, ModelCard, SamplingParams, cards_key
from protocol.features import first_unsupported, requested_features
from protocol.models_file import ModelsFileError, load_models_file
from tests.tiny_models import write_models_file
from tests.unit.test_relay import RecordingCelery, heartbeat
from workers.engines import with_engine
from workers.settings import WorkerSettings


def _job(**fields) -> GenerateJob:
    if "prompt" not in fields:
        fields.setdefault("messages", (ChatMessage(role="user", content="hi"),))
    return GenerateJob(request_id="r", model="m", expires_at=time.time() + 60, **fields)


def test_a_plain_request_asks_for_nothing_beyond_text() -> None:
    assert requested_features(_job()) == {}
    assert requested_features(_job(params=SamplingParams(temperature=0.3, top_p=0.5, max_tokens=9, stop=("x",)))) == {}


def test_each_feature_is_named_by_the_parameter_that_asked_for_it() -> None:
    constraint = Constraint(grammar="g", kind="regex", param="guided_regex")
    used = requested_features(_job(
        params=SamplingParams(logprobs=2, seed=1, top_k=4, frequency_penalty=0.5, logit_bias=((1, 2.0),),
                              cumulative_logprob=True),
        constraint=constraint))  # fmt: skip
    assert used == {"logprobs": "logprobs", "seed": "seed", "top_k": "top_k", "penalties": "frequency_penalty",
                    "logit_bias": "logit_bias", "best_of": "best_of", "constraint": "guided_regex"}  # fmt: skip
    prompt = _job(prompt=(1, 2), echo=True, params=SamplingParams(logprobs=1, prompt_logprobs=1))
    assert requested_features(prompt)["prompt_logprobs"] == "echo"  # echo + logprobs scores the prompt
    assert requested_features(prompt)["token_prompt"] == "prompt"
    assert first_unsupported(prompt, ("constraint", "echo")) == ("echo", "echo")
    assert first_unsupported(prompt, ("constraint",)) is None


def test_the_models_file_names_an_engine_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    models = load_models_file(write_models_file(tmp_path / "m.yaml", {"a": {"path": tmp_path, "engine": "llama-cpp"},
                                                                      "b": {"path": tmp_path}}))  # fmt: skip
    assert models.models["a"].engine == "llama-cpp" and models.models["b"].engine == "transformers"
    with pytest.raises(ModelsFileError, match="engine"):
        load_models_file(write_models_file(tmp_path / "bad.yaml", {"a": {"path": tmp_path, "engine": "tgi"}}))


def test_the_workers_engine_setting_moves_generating_models_only(tiny_model_dir: Path, tmp_path: Path) -> None:
    from protocol import ModelSpec
    from tests.conftest import DEFAULT_MODEL_FILE

    gguf = ModelSpec(name="g", adapter="hf-causal", path=DEFAULT_MODEL_FILE)
    folder = ModelSpec(name="c", path=tiny_model_dir)
    echo = ModelSpec(name="e", adapter="echo")
    llama = WorkerSettings(engine="llama-cpp")
    assert with_engine(gguf, llama).engine == "llama-cpp"
    assert with_engine(folder, llama).engine == "transformers"  # llama.cpp runs GGUF files only
    assert with_engine(folder, WorkerSettings(engine="vllm")).engine == "vllm"
    assert with_engine(echo, llama).engine == "transformers"  # nothing to run on an engine
    assert with_engine(gguf, WorkerSettings()).engine == "transformers"


@pytest.fixture
def redis() -> FakeRedis:
    return FakeRedis()


@pytest.fixture
def relay(redis: FakeRedis, tmp_path: Path) -> Relay:
    models = write_models_file(tmp_path / "models.yaml", {"m": {"path": tmp_path}})
    return Relay(redis, RecordingCelery(redis), Registry(redis, load_models_file(models), 6.0), 30.0, 10.0)


async def _card(redis: FakeRedis, worker: str, **fields) -> None:
    await heartbeat(redis, "m", worker)
    await redis.hset(cards_key("m"), worker, ModelCard(capabilities=GENERATES, max_model_len=64, **fields).model_dump_json())


async def test_the_gateway_refuses_what_the_engine_cannot_give_before_queueing(relay: Relay, redis: FakeRedis) -> None:
    await _card(redis, "w1", engine="llama-cpp", unsupported=("constraint", "prompt_logprobs"))
    job = _job(constraint=Constraint(grammar="g", kind="json_schema", param="response_format"))
    with pytest.raises(InvalidRequest) as refused:
        await relay.submit(job)
    assert refused.value.param == "response_format" and "llama-cpp" in str(refused.value)
    assert relay.celery.sent == []
    async with await relay.submit(_job(params=SamplingParams(logprobs=2, seed=3))):
        assert len(relay.celery.sent) == 1  # what it can give goes through


async def test_what_any_live_worker_cannot_give_is_refused(relay: Relay, redis: FakeRedis) -> None:
    """A request may land on any of the model's workers: one that cannot serve it refuses it."""
    await _card(redis, "w1", engine="transformers")
    await _card(redis, "w2", engine="llama-cpp", unsupported=("prompt_logprobs",))
    with pytest.raises(InvalidRequest) as refused:
        await relay.submit(_job(params=SamplingParams(prompt_logprobs=1)))
    assert refused.value.param == "prompt_logprobs" and "transformers/llama-cpp" in str(refused.value)


def test_the_engine_commands_carry_the_models_settings(tmp_path: Path) -> None:
    from protocol import ModelSpec
    from workers.engine_kinds import SIDECARS

    gguf = tmp_path / "m.gguf"
    spec = ModelSpec(name="m", path=gguf, engine="llama-cpp", slots=8, options={"kv_tokens": 4096})
    argv = SIDECARS["llama-cpp"].command(spec, 1234, 2048, tmp_path, binary=Path("/bin/true"))
    assert argv[0] == "/bin/true" and argv[argv.index("--model") + 1] == str(gguf)
    assert argv[argv.index("--port") + 1] == "1234" and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--parallel") + 1] == "8" and argv[argv.index("--ctx-size") + 1] == "4096"
    assert "--threads" in argv and "--threads-batch" in argv  # a core left to the stack for one-token steps
    own = spec.model_copy(update={"options": {"engine_args": ["-t", "3"]}})
    argv = SIDECARS["llama-cpp"].command(own, 1, 2048, tmp_path, binary=Path("/bin/true"))
    assert "--threads" not in argv and argv[-2:] == ["-t", "3"]
    vllm = ModelSpec(name="q", path=tmp_path, engine="vllm", slots=32, dtype="bfloat16", trust_remote_code=True,
                     options={"engine_command": ["/opt/vllm/bin/vllm", "serve"], "engine_args": ["--enforce-eager"]})  # fmt: skip
    argv = SIDECARS["vllm"].command(vllm, 99, 4096, tmp_path, binary=None)
    assert argv[:3] == ["/opt/vllm/bin/vllm", "serve", str(tmp_path)]
    for flag, value in (("--port", "99"), ("--served-model-name", "q"), ("--max-num-seqs", "32"),
                        ("--max-model-len", "4096"), ("--dtype", "bfloat16")):  # fmt: skip
        assert argv[argv.index(flag) + 1] == value
    assert "--trust-remote-code" in argv and argv[-1] == "--enforce-eager"


def test_a_missing_llama_server_names_the_make_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from protocol import ModelSpec
    from workers.engine_kinds import SIDECARS, EngineNotInstalled

    monkeypatch.setenv("PATH", str(tmp_path))
    spec = ModelSpec(name="m", path=tmp_path / "m.gguf", engine="llama-cpp")
    with pytest.raises(EngineNotInstalled, match="make llama-cpp"):
        SIDECARS["llama-cpp"].command(spec, 1, 64, tmp_path, binary=None)


def test_make_wires_the_engine_and_the_build(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import REPO

    dry = lambda *args: subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True).stdout  # noqa: E731
    assert "QUEUECHAT_ENGINE=llama-cpp" in dry("run", "ENGINE=llama-cpp")
    assert "build_llama_cpp.py" in dry("run", "ENGINE=llama-cpp")
    assert "QUEUECHAT_ENGINE" not in dry("run") and "build_llama_cpp.py" not in dry("run")
    assert "build_llama_cpp.py" in dry("test")  # CI builds it (or says why not and goes on)


def test_the_build_is_made_once(tmp_path: Path) -> None:
    """A build for the same version is kept: the script returns at once without building."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    target = tmp_path / "llama.cpp" / "bin"
    target.mkdir(parents=True)
    (target / "llama-server").write_text("#!/bin/sh\n")
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from build_llama_cpp import SOURCE_PACKAGE
    finally:
        sys.path.remove(str(REPO / "scripts"))
    (target / "llama-server.version").write_text(SOURCE_PACKAGE + "\n")
    env = {**os.environ, "QUEUECHAT_CACHE_DIR": str(tmp_path), "PATH": "/nonexistent"}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "build_llama_cpp.py")], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and "already built" in done.stdout
    (target / "llama-server.version").write_text("an older version\n")
    again = subprocess.run([sys.executable, str(REPO / "scripts" / "build_llama_cpp.py")], env=env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert again.returncode == 1 and "cmake" in again.stderr  # it would rebuild, and says what it lacks
