"""Continuous batching over the tiny model: a request's output does not depend on its neighbours."""

from __future__ import annotations

import threading
import time

import pytest

from adapters.hf_causal import HfCausalAdapter
from protocol import SamplingParams, Usage
from protocol.models_file import ModelSpec
from workers.batch_engine import BatchEngine
from workers.contract import Finished

PROMPTS = [
    "The capital of France is",
    "Hello! How are you today?",
    "Queues hold work until",
    "0123456789 + - * / =",
    "Élan, naïve café: über straße — 東京",
    "Workers stream tokens back, one by one, to the gateway and the client",
]


class RecordingSink:
    def __init__(self) -> None:
        self.texts: list[str] = []
        self.logprobs: list = []
        self.finished: Finished | None = None
        self.error_code: str | None = None
        self.done_at: float | None = None

    def token(self, text: str, logprobs: tuple | None = None) -> None:
        self.texts.append(text)
        self.logprobs.extend(logprobs or ())

    def prompt(self, text: str | None, tokens: tuple | None) -> None:
        self.prompt_text, self.prompt_tokens = text, tokens

    def done(self, finish_reason: str, usage: Usage, cumulative_logprob: float | None = None) -> None:
        self.finished = Finished(finish_reason, usage)  # type: ignore[arg-type]
        self.cumulative_logprob = cumulative_logprob
        self.done_at = time.monotonic()

    def error(self, code: str, message: str, param: str | None = None) -> None:
        self.error_code = code

    @property
    def text(self) -> str:
        return "".join(self.texts)


@pytest.fixture(scope="module")
def batched(make_module_engine) -> BatchEngine:
    return make_module_engine(slots=16)


@pytest.fixture(scope="module")
def alone(make_module_engine) -> BatchEngine:
    return make_module_engine(slots=1)


def _ids(adapter: HfCausalAdapter, prompt: str) -> list[int]:
    return adapter.text_prompt(prompt)


def _solo(engine: BatchEngine, ids: list[int], params: SamplingParams) -> tuple[str, Finished]:
    sink = RecordingSink()
    seq = engine.submit(ids, params, sink)
    assert seq.finished.wait(60)
    assert sink.finished is not None, sink.error_code
    return sink.text, sink.finished


def _wait_for_tokens(sink: RecordingSink, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(sink.texts) < count and sink.finished is None and time.monotonic() < deadline:
        time.sleep(0.001)


def test_greedy_outputs_in_one_batch_equal_each_request_alone(adapter, batched, alone) -> None:
    params = [SamplingParams(temperature=0.0, max_tokens=10 + 7 * i) for i in range(len(PROMPTS))]
    expected = [_solo(alone, _ids(adapter, p), q) for p, q in zip(PROMPTS, params)]
    sinks = [RecordingSink() for _ in PROMPTS]
    seqs = [batched.submit(_ids(adapter, p), q, s) for p, q, s in zip(PROMPTS, params, sinks)]
    assert all(seq.finished.wait(60) for seq in seqs)
    assert [(s.text, s.finished) for s in sinks] == expected


def test_requests_joining_and_leaving_mid_generation_do_not_change_each_other(adapter, batched, alone) -> None:
    long, short = SamplingParams(temperature=0.0, max_tokens=60), SamplingParams(temperature=0.0, max_tokens=4)
    plan = [(PROMPTS[0], long), (PROMPTS[1], short), (PROMPTS[2], long), (PROMPTS[3], short), (PROMPTS[4], long)]
    expected = [_solo(alone, _ids(adapter, p), q) for p, q in plan]
    sinks = []
    for prompt, params in plan:  # each joins once the previous one is mid-generation
        if sinks:
            _wait_for_tokens(sinks[-1], 2)
        sink = RecordingSink()
        batched.submit(_ids(adapter, prompt), params, sink)
        sinks.append(sink)
    deadline = time.monotonic() + 60
    while any(s.finished is None for s in sinks) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [(s.text, s.finished) for s in sinks] == expected


def test_a_seed_gives_the_same_sample_whatever_the_neighbours(adapter, batched, alone) -> None:
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=30)
    ids = _ids(adapter, PROMPTS[5])
    expected = _solo(alone, ids, params)
    neighbours = [RecordingSink() for _ in range(5)]
    for i, sink in enumerate(neighbours):
        batched.submit(_ids(adapter, PROMPTS[i]), SamplingParams(temperature=1.3, max_tokens=50), sink)
    assert _solo(batched, ids, params) == expected


def test_stop_and_max_tokens_are_per_request_inside_a_batch(adapter, batched, alone) -> None:
    ids = _ids(adapter, PROMPTS[0])
    reference, _ = _solo(alone, ids, SamplingParams(temperature=0.0, max_tokens=40))
    visible = reference.strip("\ufffd")
    stop = visible[len(visible) // 2 : len(visible) // 2 + 2]
    requests = {
        "stop": SamplingParams(temperature=0.0, max_tokens=40, stop=(stop,)),
        "short": SamplingParams(temperature=0.0, max_tokens=3),
        "free": SamplingParams(temperature=0.0, max_tokens=40),
    }
    sinks = {name: RecordingSink() for name in requests}
    seqs = [batched.submit(ids, params, sinks[name]) for name, params in requests.items()]
    assert all(seq.finished.wait(60) for seq in seqs)
    assert sinks["stop"].text == reference[: reference.find(stop)]
    assert sinks["stop"].finished.finish_reason == "stop"
    assert sinks["short"].finished.usage.completion_tokens == 3
    assert sinks["short"].finished.finish_reason == "length"
    assert sinks["free"].text == reference


def test_a_request_arriving_while_fifteen_run_streams_before_they_finish(adapter, batched) -> None:
    running = [RecordingSink() for _ in range(15)]
    for i, sink in enumerate(running):
        batched.submit(_ids(adapter, PROMPTS[i % len(PROMPTS)]), SamplingParams(temperature=0.0, max_tokens=200), sink)
    for sink in running:
        _wait_for_tokens(sink, 1)
    assert all(s.finished is None for s in running)
    assert batched.free_slots == 1  # 15 of 16 slots decode
    late = RecordingSink()
    seq = batched.submit(_ids(adapter, PROMPTS[1]), SamplingParams(temperature=0.0, max_tokens=3), late)
    assert seq.finished.wait(60)
    assert late.finished is not None and late.finished.usage.completion_tokens == 3
    assert all(s.finished is None for s in running), "the late request finished first"


def test_cancelled_request_leaves_the_batch_and_others_continue(adapter, batched) -> None:
    keep, drop = RecordingSink(), RecordingSink()
    kept = batched.submit(_ids(adapter, PROMPTS[0]), SamplingParams(temperature=0.0, max_tokens=30), keep)
    dropped = batched.submit(_ids(adapter, PROMPTS[1]), SamplingParams(temperature=0.0, max_tokens=200), drop)
    _wait_for_tokens(drop, 2)
    batched.cancel(dropped)
    assert dropped.finished.wait(30) and drop.error_code == "cancelled" and drop.finished is None
    assert kept.finished.wait(60) and keep.finished.usage.completion_tokens == 30


def test_many_threads_submitting_at_once_all_finish(adapter, batched) -> None:
    sinks = [RecordingSink() for _ in range(24)]  # more than the 16 slots: the rest wait their turn

    def go(i: int) -> None:
        batched.submit(_ids(adapter, PROMPTS[i % len(PROMPTS)]), SamplingParams(temperature=0.0, max_tokens=8), sinks[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(sinks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 60
    while any(s.finished is None for s in sinks) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(s.finished is not None and s.finished.usage.completion_tokens <= 8 for s in sinks)


def test_prefix_cache_gives_the_same_tokens_as_computing_every_prompt_whole(
    tiny_model_dir, tmp_path, make_engine
) -> None:
    """Prompts sharing prefixes of different lengths join in one prefill; the cache is cold, then warm."""
    shared = "The capital of France is Paris. The capital of Italy is Rome. Queues hold work until " * 2
    prompts = [shared + tail for tail in ("a worker", "Hello!", "0123456789 + - * / = ( )")] + [PROMPTS[3], shared]
    outputs = {}
    for use_cache in (False, True):
        spec = ModelSpec(name="tiny", path=tiny_model_dir, device="cpu", prefix_cache=use_cache)
        adapter = HfCausalAdapter(spec, tmp_path)
        adapter.load()
        engine = make_engine(adapter, slots=16)
        runs = []
        for _ in range(2):  # the second round finds the prefixes cached (when the cache is on)
            sinks = [RecordingSink() for _ in prompts]
            seqs = [engine.submit(adapter.text_prompt(p), SamplingParams(temperature=0.0, max_tokens=12), s)
                    for p, s in zip(prompts, sinks)]  # fmt: skip
            assert all(seq.finished.wait(60) for seq in seqs)
            runs.append([(s.text, s.finished) for s in sinks])
        outputs[use_cache] = runs
        if use_cache:
            assert adapter._prefixes is not None and adapter._prefixes.hits > 0
    assert outputs[True][0] == outputs[True][1] == outputs[False][0] == outputs[False][1]


def test_a_model_placed_by_accelerate_device_map_generates_the_same(
    adapter, alone, tiny_model_dir, tmp_path, make_engine
) -> None:
    spec = ModelSpec(name="tiny", path=tiny_model_dir, device_map="cpu", dtype="float32")
    mapped = HfCausalAdapter(spec, tmp_path)
    mapped.load()
    engine = make_engine(mapped, slots=4)
    ids = _ids(adapter, PROMPTS[2])
    params = SamplingParams(temperature=0.0, max_tokens=16)
    assert _solo(engine, ids, params) == _solo(alone, ids, params)
