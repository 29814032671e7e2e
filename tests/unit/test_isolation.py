"""One request cannot hurt the others in its engine: degenerate sampling parameters, a failure
while emitting one row, a prompt whose prefill fails, the KV cache budget, keep-alives while
text is held back, and errors that leave the worker at once."""

from __future__ import annotations

import time
from pathlib import Path

import fakeredis
import pytest
import torch

from adapters import KVCacheExceeded
from adapters.echo import EchoAdapter
from adapters.hf_causal import HfCausalAdapter
from adapters.sampling import make_generator, next_token
from protocol import GenerateJob, SamplingParams, channel_for, decode_event
from protocol.models_file import ModelSpec
from tests.unit.test_batching import RecordingSink
from workers.batch_engine import BatchEngine
from workers.publisher import EventPublisher, Outbox

KV_BUDGET = 200  # token positions; the tiny model's context is 256


class Sink(RecordingSink):
    def __init__(self, explode_on: int | None = None) -> None:
        super().__init__()
        self.first_at: float | None = None
        self.keepalives = 0
        self._explode_on = explode_on  # the n-th token event raises

    def token(self, text: str, logprobs: tuple | None = None) -> None:
        if self.first_at is None:
            self.first_at = time.monotonic()
        if self._explode_on is not None and len(self.texts) + 1 == self._explode_on:
            raise RuntimeError("this sink breaks")
        super().token(text, logprobs)

    def keepalive(self) -> None:
        self.keepalives += 1


def _load(spec: ModelSpec, cache: Path) -> HfCausalAdapter:
    adapter = HfCausalAdapter(spec, cache)
    adapter.load()
    return adapter


@pytest.fixture(scope="module")
def engine(make_module_engine) -> BatchEngine:
    return make_module_engine(slots=8)


@pytest.fixture(scope="module")
def bounded(adapter: HfCausalAdapter, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory,
            make_module_engine) -> BatchEngine:  # fmt: skip
    """The tiny model with room for KV_BUDGET token positions."""
    mb = KV_BUDGET * adapter.kv_bytes_per_token / (1 << 20)
    spec = ModelSpec(name="tiny-bounded", path=tiny_model_dir, device="cpu", dtype="float32", kv_cache_mb=mb)
    limited = _load(spec, tmp_path_factory.mktemp("b"))
    assert limited.kv_budget_tokens == KV_BUDGET
    return make_module_engine(limited, slots=8)


def _ids(engine: BatchEngine, tokens: int) -> list[int]:
    ids = engine.adapter.text_prompt("The capital of France is Paris. " * 40)
    assert len(ids) >= tokens
    return ids[:tokens]


def _job(prompt: str, **params: object) -> GenerateJob:
    return GenerateJob(request_id="cmpl-x", model="tiny", prompt=prompt, params=SamplingParams(**params),
                       expires_at=time.time() + 60)  # fmt: skip


@pytest.mark.parametrize(
    "params",
    [{"temperature": 1e-40}, {"temperature": 5e-324}, {"temperature": 1.0, "top_p": 1e-300},
     {"temperature": 2.0, "top_p": 1e-30, "top_k": 1}],
)  # fmt: skip
def test_degenerate_parameters_sample_the_likeliest_token(params: dict) -> None:
    logits = torch.tensor([0.5, 3.0, -1.0, 2.9])
    generator = torch.Generator().manual_seed(0)
    assert next_token(logits, SamplingParams(**params), generator) == 1


def test_non_finite_logits_fall_back_to_the_likeliest_token() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.tensor([float("nan"), 1.0, float("nan"), 0.5])
    assert next_token(logits, SamplingParams(temperature=0.7, top_p=1.0), generator) == 1
    assert next_token(torch.full((4,), float("-inf")), SamplingParams(temperature=0.7, top_p=1.0), generator) in range(4)


@pytest.mark.parametrize("seed", [2**70, -(2**63), 2**64 - 1, -(2**80)])
def test_any_integer_seed_is_taken_and_gives_the_same_draws(seed: int) -> None:
    params = SamplingParams(temperature=1.0, seed=seed)
    first, again = make_generator(params, torch.device("cpu")), make_generator(params, torch.device("cpu"))
    assert torch.rand(4, generator=first).tolist() == torch.rand(4, generator=again).tolist()


def test_a_row_with_degenerate_sampling_does_not_fail_its_batch(engine: BatchEngine) -> None:
    ids = _ids(engine, 12)
    sinks = [Sink() for _ in range(4)]
    params = [SamplingParams(temperature=0.8, seed=i, max_tokens=20) for i in range(3)]
    params.append(SamplingParams(temperature=1e-40, top_p=1e-300, max_tokens=20))
    seqs = [engine.submit(ids, p, s) for p, s in zip(params, sinks)]
    assert all(seq.finished.wait(60) for seq in seqs)
    assert [s.error_code for s in sinks] == [None] * 4
    assert all(s.finished is not None and s.finished.usage.completion_tokens >= 1 for s in sinks)


def test_a_row_that_fails_fails_alone(engine: BatchEngine) -> None:
    ids = _ids(engine, 10)
    healthy = [Sink() for _ in range(3)]
    broken = Sink(explode_on=3)
    seqs = [engine.submit(ids, SamplingParams(temperature=0.0, max_tokens=15), s) for s in [*healthy, broken]]
    assert all(seq.finished.wait(60) for seq in seqs)
    assert broken.error_code == "internal_error"
    assert all(s.error_code is None and s.finished is not None for s in healthy)
    deadline = time.monotonic() + 5  # a row is signalled finished just before the engine drops it
    while engine._rows and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(engine._rows) == 0


def test_a_prompt_whose_prefill_fails_fails_only_the_newcomers(engine: BatchEngine) -> None:
    ids = _ids(engine, 10)
    running = Sink()
    first = engine.submit(ids, SamplingParams(temperature=0.0, max_tokens=60), running)
    deadline = time.monotonic() + 30
    while not running.texts and time.monotonic() < deadline:
        time.sleep(0.005)
    poisoned = Sink()
    bad = engine.submit([*ids, 10**6], SamplingParams(temperature=0.0, max_tokens=5), poisoned)  # no such token
    assert bad.finished.wait(30) and first.finished.wait(60)
    assert poisoned.error_code == "internal_error"
    assert running.error_code is None and running.finished is not None
    assert running.finished.usage.completion_tokens == 60 or running.finished.finish_reason == "stop"


def test_a_request_that_can_never_fit_is_refused_naming_its_cause(bounded: BatchEngine) -> None:
    with pytest.raises(KVCacheExceeded) as info:
        bounded.prompt_ids(_job("The capital of France is", max_tokens=KV_BUDGET))
    assert info.value.param == "max_tokens" and f"at most {KV_BUDGET}" in str(info.value)
    long_prompt = bounded.adapter.tokenizer.decode(_ids(bounded, KV_BUDGET + 5))
    with pytest.raises(KVCacheExceeded) as info:
        bounded.prompt_ids(_job(long_prompt))
    assert info.value.param == "prompt"


def test_an_implicit_limit_is_cut_to_what_fits(bounded: BatchEngine) -> None:
    ids = _ids(bounded, 20)
    sink = Sink()
    seq = bounded.submit(ids, SamplingParams(temperature=0.0), sink)
    assert seq.limit == KV_BUDGET - 20
    assert seq.finished.wait(60) and sink.error_code is None


def test_a_request_that_does_not_fit_now_waits_for_room(bounded: BatchEngine) -> None:
    ids = _ids(bounded, 20)
    big = SamplingParams(temperature=0.0, max_tokens=150)  # alone 170 positions; two would need 340
    first, second = Sink(), Sink()
    seqs = [bounded.submit(ids, big, first), bounded.submit(ids, big, second)]
    peak = 0
    while not all(seq.finished.is_set() for seq in seqs):
        peak = max(peak, bounded.stats()["kv_tokens"])
        time.sleep(0.001)
    assert first.error_code is None and second.error_code is None
    assert first.finished is not None and second.finished is not None
    assert second.first_at is not None and first.done_at is not None and second.first_at >= first.done_at
    assert 0 < peak <= KV_BUDGET


def test_small_requests_share_the_budget(bounded: BatchEngine) -> None:
    ids = _ids(bounded, 10)
    sinks = [Sink() for _ in range(4)]
    seqs = [bounded.submit(ids, SamplingParams(temperature=0.0, max_tokens=30), s) for s in sinks]
    assert all(seq.finished.wait(60) for seq in seqs)
    starts = sorted(s.first_at for s in sinks if s.first_at)
    assert len(starts) == 4 and starts[-1] < min(s.done_at for s in sinks if s.done_at)  # all ran together


def test_text_held_back_for_a_stop_sequence_sends_keepalives(tmp_path: Path, make_engine) -> None:
    adapter = EchoAdapter(ModelSpec(name="echo", adapter="echo", options={"step_delay": 0.01}), tmp_path)
    adapter.load()
    echo = make_engine(adapter, slots=2, keepalive=0.05)
    sink = Sink()
    seq = echo.submit(list(b"aaaa"), SamplingParams(temperature=0.0, max_tokens=60, stop=("a" * 1000,)), sink)
    assert seq.finished.wait(30)
    assert sink.keepalives >= 3
    assert sink.text == "a" * 60 and sink.first_at is not None and sink.first_at >= sink.done_at - 0.05


def test_an_error_is_published_at_once_even_when_events_are_batched() -> None:
    """Not at the engine's next step, which may never come."""
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    listener = client.pubsub()
    listener.subscribe(channel_for("r1"))
    listener.get_message(timeout=1)
    publisher = EventPublisher(client, "r1").buffered(Outbox(client))
    publisher.token("held in the outbox")
    publisher.error("invalid_request", "bad seed", param="seed")
    got = [listener.get_message(timeout=1) for _ in range(2)]
    events = [decode_event(m["data"]) for m in got if m]
    assert [e.type for e in events] == ["token", "error"] and [e.seq for e in events] == [0, 1]


class _SlowTextAdapter:
    """A text-producing adapter (as remote-code ChatGLM's stream_chat) that writes 'a' every 20 ms."""

    context_length = 4096
    template = type("T", (), {"stop": ()})()
    spec = ModelSpec(name="text", adapter="echo")

    def default_sampling(self) -> dict:
        return {}

    def count_tokens(self, text: str) -> int:
        return len(text)

    def stream(self, job, params, limit, prompt_tokens):
        for _ in range(limit):
            time.sleep(0.02)
            yield "a"


def test_the_serial_engine_sends_keepalives_while_text_is_held_back(make_engine) -> None:
    from workers.serial_engine import SerialEngine

    engine = make_engine(_SlowTextAdapter(), cls=SerialEngine, keepalive=0.05)
    sink = Sink()
    job = GenerateJob(request_id="r", model="text", prompt="a", expires_at=time.time() + 60,
                      params=SamplingParams(max_tokens=30, stop=("a" * 1000,)))  # fmt: skip
    request = engine.submit_job(job, [1], sink)
    assert request.finished.wait(30)
    assert sink.keepalives >= 3 and sink.text == "a" * 30


def test_a_request_cancelled_while_waiting_for_room_leaves_at_once(bounded: BatchEngine) -> None:
    ids = _ids(bounded, 20)
    big = SamplingParams(temperature=0.0, max_tokens=150)
    running, waiting = Sink(), Sink()
    first = bounded.submit(ids, big, running)
    second = bounded.submit(ids, big, waiting)
    time.sleep(0.05)
    bounded.cancel(second)
    assert second.finished.wait(5)
    assert waiting.error_code == "cancelled" and waiting.first_at is None and not first.finished.is_set()
    assert first.finished.wait(60) and running.error_code is None
