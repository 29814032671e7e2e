"""The sidecar engine (workers/sidecar_engine.py) against a fake vLLM server (tests/fakes/
openai_engine.py) that speaks the same protocol: what it sends, what it relays, cancellation, a
server that dies (requests fail cleanly, it is started again) and one that cannot start."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from adapters import UnsupportedParameter
from adapters.hf_prompts import HfPromptAdapter
from protocol import ChatMessage, Constraint, GenerateJob, ModelSpec, SamplingParams
from tests.integration.processes import eventually, running
from workers.engine_kinds import SIDECARS
from workers.sidecar import SidecarFailed
from workers.sidecar_engine import SidecarEngine, _logprobs

FAKE = [sys.executable, "-m", "tests.fakes.openai_engine"]
REPO = Path(__file__).resolve().parents[2]


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def prompt(self, text, tokens) -> None:
        self.events.append(("prompt", text))

    def token(self, text, logprobs=None) -> None:
        self.events.append(("token", text, logprobs))

    def done(self, finish_reason, usage, cumulative_logprob=None) -> None:
        self.events.append(("done", finish_reason, usage, cumulative_logprob))

    def error(self, code, message, param=None) -> None:
        self.events.append(("error", code, message, param))

    def keepalive(self) -> None:
        self.events.append(("keepalive",))

    @property
    def text(self) -> str:
        return "".join(e[1] for e in self.events if e[0] == "token")

    @property
    def last(self) -> tuple:
        return self.events[-1]


def _engine(model_dir: Path, record: Path, delay: float = 0.0, slots: int = 4) -> SidecarEngine:
    spec = ModelSpec(name="fake-vllm", adapter="hf-causal", path=model_dir, engine="vllm", slots=slots,
                     options={"engine_command": FAKE,
                              "engine_args": ["--token-delay", str(delay), "--record", str(record)]})  # fmt: skip
    adapter = HfPromptAdapter(spec, model_dir / "cache")
    adapter.load()
    kind = SIDECARS["vllm"]
    command = lambda port: kind.command(spec, port, adapter.context_length, model_dir, None)  # noqa: E731
    os.environ["PYTHONPATH"] = str(REPO)  # the fake is imported from the repository
    return SidecarEngine(adapter, spec, command, keepalive=0.5, ready_timeout=60)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    record = tmp_path_factory.mktemp("fake") / "requests.jsonl"
    engine = _engine(tiny_model_dir, record, delay=0.02)
    engine.record = record  # type: ignore[attr-defined]
    yield engine
    engine.close()


def _job(**fields) -> GenerateJob:
    fields.setdefault("messages", (ChatMessage(role="user", content="hello there"),))
    return GenerateJob(request_id=f"r{time.monotonic_ns()}", model="fake-vllm", expires_at=time.time() + 60, **fields)


def _run(engine: SidecarEngine, job: GenerateJob, timeout: float = 30) -> Sink:
    sink = Sink()
    request = engine.submit_job(job, engine.prompt_ids(job), sink)
    assert request.finished.wait(timeout)
    return sink


def _requests(engine) -> list[dict]:
    return [json.loads(line) for line in engine.record.read_text().splitlines()]


def test_a_chat_goes_as_the_templated_token_ids_with_every_parameter(engine: SidecarEngine) -> None:
    params = SamplingParams(temperature=0.7, top_p=0.9, top_k=5, seed=11, max_tokens=6, stop=("zulu",),
                            presence_penalty=0.5, logit_bias=((3, -100.0),))  # fmt: skip
    job = _job(params=params)
    sink = _run(engine, job)
    sent = _requests(engine)[-1]["body"]
    assert sent["prompt"] == engine.prompt_ids(job)
    assert sent["model"] == "fake-vllm" and sent["max_tokens"] == 6 and sent["stream"] is True
    assert (sent["temperature"], sent["top_p"], sent["top_k"], sent["seed"]) == (0.7, 0.9, 5, 11)
    assert sent["presence_penalty"] == 0.5 and sent["logit_bias"] == {"3": -100.0}
    assert sent["stop"][0] == "zulu" and "logprobs" not in sent
    assert sink.last[0] == "done" and sink.last[1] == "length"
    assert sink.last[2].completion_tokens == 6 and sink.last[2].prompt_tokens == len(sent["prompt"])
    assert len(sink.text.split()) == 6
    assert engine.stats()["tokens"] >= 6


def test_greedy_is_sent_as_temperature_zero_and_a_seed_repeats(engine: SidecarEngine) -> None:
    a = _run(engine, _job(params=SamplingParams(temperature=0, max_tokens=5)))
    assert _requests(engine)[-1]["body"]["temperature"] == 0.0
    b = _run(engine, _job(params=SamplingParams(temperature=0, max_tokens=5)))
    assert a.text == b.text
    seeded = [_run(engine, _job(params=SamplingParams(temperature=1, seed=s, max_tokens=8))).text for s in (1, 1, 2)]
    assert seeded[0] == seeded[1] != seeded[2]


def test_stops_end_the_reply_before_them(engine: SidecarEngine) -> None:
    greedy = _run(engine, _job(params=SamplingParams(temperature=0, max_tokens=8))).text
    stop = greedy.split()[3]
    sink = _run(engine, _job(params=SamplingParams(temperature=0, max_tokens=8, stop=(stop,))))
    assert sink.last[1] == "stop" and stop not in sink.text and greedy.startswith(sink.text)


def test_logprobs_are_relayed_with_k_alternatives_and_summed_for_best_of(engine: SidecarEngine) -> None:
    sink = _run(engine, _job(params=SamplingParams(max_tokens=3, logprobs=2, cumulative_logprob=True)))
    entries = [lp for e in sink.events if e[0] == "token" for lp in e[2]]
    assert len(entries) == 3 and all(len(e.top) == 2 and e.logprob == -0.5 for e in entries)
    assert entries[0].top[0].logprob >= entries[0].top[1].logprob
    assert sink.last[3] == pytest.approx(-1.5)
    zero = _run(engine, _job(params=SamplingParams(max_tokens=2, logprobs=0)))
    assert _requests(engine)[-1]["body"]["logprobs"] == 1  # 0 would give none at all
    assert all(lp.top == () for e in zero.events if e[0] == "token" for lp in e[2])


def test_llama_cpp_logprobs_spelling_is_read_too() -> None:
    raw = {"content": [{"id": 5, "token": " a", "bytes": [32, 97], "logprob": -0.7,
                        "top_logprobs": [{"id": 5, "token": " a", "bytes": [32, 97], "logprob": -0.7},
                                         {"id": 6, "token": " b", "bytes": [32, 98], "logprob": -2.0}]}]}  # fmt: skip
    [entry] = _logprobs(raw, 1)
    assert (entry.token, entry.logprob, entry.bytes) == (" a", -0.7, (32, 97))
    assert [t.token for t in entry.top] == [" a"]


def test_echo_and_max_tokens_zero_are_answered_without_the_server(engine: SidecarEngine) -> None:
    sent_before = len(_requests(engine))
    sink = _run(engine, _job(messages=None, prompt="say it", echo=True, params=SamplingParams(max_tokens=0)))
    assert sink.events[0] == ("prompt", "say it")
    assert sink.last[1] == "length" and sink.last[2].completion_tokens == 0
    assert len(_requests(engine)) == sent_before


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"params": SamplingParams(prompt_logprobs=1)}, "prompt_logprobs"),
        ({"messages": None, "prompt": "x", "echo": True, "params": SamplingParams(logprobs=1, prompt_logprobs=1)},
         "echo"),
        ({"constraint": Constraint(grammar='{"grammars": []}', kind="json_schema", param="response_format")},
         "response_format"),
    ],
)  # fmt: skip
def test_what_the_engine_cannot_give_is_refused_naming_the_parameter(engine, fields, param) -> None:
    with pytest.raises(UnsupportedParameter) as refused:
        engine.prompt_ids(_job(**fields))
    assert refused.value.param == param and "vllm" in str(refused.value)
    assert set(engine.card().unsupported) == {"prompt_logprobs", "constraint"}
    assert engine.card().engine == "vllm"


def test_a_cancelled_request_is_closed_at_the_server(engine: SidecarEngine) -> None:
    sink = Sink()
    job = _job(params=SamplingParams(max_tokens=500))
    request = engine.submit_job(job, engine.prompt_ids(job), sink)
    deadline = time.monotonic() + 10
    while sink.text.count(" ") < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.cancel(request)
    assert request.finished.wait(10)
    assert sink.last[:2] == ("error", "cancelled")
    assert eventually(lambda: _requests(engine)[-1]["ended"] == "aborted", 5)
    assert engine.free_slots == engine.slots


def test_a_dead_server_fails_its_requests_cleanly_and_is_started_again(tiny_model_dir: Path, tmp_path: Path) -> None:
    engine = _engine(tiny_model_dir, tmp_path / "requests.jsonl", delay=0.05)
    try:
        first_pid = engine.sidecar.pid
        sink = Sink()
        job = _job(params=SamplingParams(max_tokens=500))
        request = engine.submit_job(job, engine.prompt_ids(job), sink)
        assert eventually(lambda: sink.text.count(" ") >= 2, 10)
        os.kill(first_pid, signal.SIGKILL)
        assert request.finished.wait(10)
        assert sink.last[:2] == ("error", "engine_lost")
        assert eventually(lambda: engine.sidecar.ready and engine.sidecar.pid != first_pid, 30)
        assert engine.stats()["engine_restarts"] == 1 and engine.stats()["engine_lost_requests"] == 1
        after = _run(engine, _job(params=SamplingParams(max_tokens=3)))
        assert after.last[:2] == ("done", "length")
    finally:
        engine.close()
    assert eventually(lambda: not running(engine.sidecar.pid), 10), "close() stops the server"


def test_a_server_that_cannot_start_is_a_load_failure_with_its_output(tiny_model_dir: Path) -> None:
    spec = ModelSpec(name="fake-vllm", path=tiny_model_dir, engine="vllm",
                     options={"engine_command": FAKE, "engine_args": ["--no-such-flag"]})  # fmt: skip
    adapter = HfPromptAdapter(spec, tiny_model_dir / "cache")
    adapter.load()
    command = lambda port: SIDECARS["vllm"].command(spec, port, 64, tiny_model_dir, None)  # noqa: E731
    with pytest.raises(SidecarFailed, match="no-such-flag"):
        SidecarEngine(adapter, spec, command, ready_timeout=30)


def test_a_worker_reports_an_engine_that_cannot_start_and_serves_its_other_models(tiny_model_dir: Path,
                                                                                  tmp_path: Path) -> None:  # fmt: skip
    from tests.conftest import DEFAULT_MODEL_FILE
    from tests.tiny_models import write_models_file
    from workers.engines import load_engines
    from workers.settings import WorkerSettings

    models = write_models_file(tmp_path / "models.yaml", {
        "broken": {"adapter": "hf-causal", "path": tiny_model_dir, "engine": "vllm",
                   "options": {"engine_command": FAKE, "engine_args": ["--no-such-flag"]}},
        "missing": {"adapter": "hf-causal", "path": DEFAULT_MODEL_FILE, "engine": "llama-cpp"},
        "echo": {"adapter": "echo", "slots": 1},
    })  # fmt: skip
    settings = WorkerSettings(models_file=models, cache_dir=tmp_path / "cache", llama_server=tmp_path / "nothing")
    loaded = load_engines(settings, ["broken", "missing", "echo"], outbox=type("O", (), {"flush": lambda self: None})())
    try:
        assert list(loaded.engines) == ["echo"]
        assert "no-such-flag" in loaded.failures["broken"] and loaded.failures["broken"].startswith("model 'broken'")
        assert "make llama-cpp" in loaded.failures["missing"]  # no llama-server where the settings point
    finally:
        for engine in loaded.engines.values():
            engine.close()
