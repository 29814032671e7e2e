"""Prefill scheduled against decode: a step prefills at most `prefill_chunk` prompt tokens, so
newcomers are prefilled first come first served and running requests keep getting tokens while a
long prompt is computed in chunks.  Outputs stay those of each request alone, in every dtype this
machine computes natively (bfloat16 is compared with bfloat16)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from adapters.hf_causal import HfCausalAdapter, cpu_has_native_bf16
from protocol import SamplingParams, Usage
from protocol.models_file import ModelSpec
from workers.batch_engine import BatchEngine

DTYPES = ["float32"] + (["bfloat16"] if cpu_has_native_bf16() else [])
WORDS = "queues hold work until a worker takes it and streams every token back to the gateway".split()


def long_text(n: int, salt: int) -> str:
    return " ".join(WORDS[(i * (salt + 3)) % len(WORDS)] for i in range(n))


class Events:
    """One log of every sink's tokens, in the order the engine thread emitted them."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def sink(self, name: str) -> Sink:
        return Sink(name, self)


class Sink:
    def __init__(self, name: str, events: Events) -> None:
        self.name, self.events, self.parts = name, events, []
        self.finished = threading.Event()
        self.error_code: str | None = None

    def token(self, text: str, logprobs: tuple | None = None) -> None:
        self.parts.append(text)
        with self.events.lock:
            self.events.log.append((self.name, text))

    def done(self, finish_reason: str, usage: Usage) -> None:
        self.finished.set()

    def error(self, code: str, message: str, param: str | None = None) -> None:
        self.error_code = code
        self.finished.set()

    def keepalive(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(self.parts)


@pytest.fixture(scope="module", params=DTYPES)
def adapter(request, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> HfCausalAdapter:
    spec = ModelSpec(name="tiny", path=tiny_model_dir, device="cpu", dtype=request.param, prefix_cache=False)
    loaded = HfCausalAdapter(spec, tmp_path_factory.mktemp("cache"))
    loaded.load()
    return loaded


def run(engine: BatchEngine, prompts: list[list[int]], params: list[SamplingParams], events: Events) -> list[Sink]:
    sinks = [events.sink(str(k)) for k in range(len(prompts))]
    for ids, p, sink in zip(prompts, params, sinks):
        engine.submit(ids, p, sink)
    assert all(s.finished.wait(120) for s in sinks)
    assert all(s.error_code is None for s in sinks), [s.error_code for s in sinks]
    return sinks


def test_chunked_prefill_while_rows_join_and_leave_gives_each_own_output(adapter, make_engine) -> None:
    prompts = [adapter.text_prompt(long_text(12 + 9 * k, k)) for k in range(8)]  # 12..~80 words
    params = [SamplingParams(temperature=0.0, max_tokens=6 + 5 * (k % 4)) for k in range(8)]
    alone = make_engine(slots=1, prefill_chunk=4096)  # one request at a time, prompt in one pass
    expected = [run(alone, [ids], [p], Events())[0].text for ids, p in zip(prompts, params)]
    chunked = make_engine(slots=8, prefill_chunk=16)  # every prompt here spans several chunks
    sinks = run(chunked, prompts, params, Events())
    assert [s.text for s in sinks] == expected


def test_running_requests_decode_between_the_chunks_of_a_long_prompt(adapter, make_engine) -> None:
    engine = make_engine(slots=4, prefill_chunk=16)
    events = Events()
    runner = events.sink("running")
    no_eos = tuple((eos, -100.0) for eos in adapter.eos_ids)  # it runs on until the end of the test
    engine.submit(adapter.text_prompt("Hello"), SamplingParams(temperature=0.0, max_tokens=200, logit_bias=no_eos, logprobs=0),
                  runner)  # fmt: skip  (logprobs: an event for every token, even one whose text is held back)
    while not runner.parts:  # it is decoding
        runner.finished.wait(0.001)
    long_ids = adapter.text_prompt(long_text(120, 1))
    chunks = -(-len(long_ids) // 16)
    newcomer = events.sink("long")
    with events.lock:
        mark = len(events.log)
    engine.submit(long_ids, SamplingParams(temperature=0.0, max_tokens=2), newcomer)
    assert newcomer.finished.wait(60) and runner.finished.wait(60)
    between = events.log[mark : events.log.index(("long", newcomer.parts[0]), mark)]
    # one decode step after each chunk but the last (which gives the newcomer its first token)
    assert chunks >= 5 and sum(1 for name, _ in between if name == "running") >= chunks - 1
    assert len(runner.parts) == 200


def test_a_burst_is_prefilled_first_come_first_served(adapter, make_engine) -> None:
    """Eight prompts arriving together, a chunk holding about two of them: the first get their
    first tokens, and go on decoding, before the last is prefilled."""
    prompts = [adapter.text_prompt(long_text(8, k)) for k in range(8)]
    engine = make_engine(slots=8, prefill_chunk=2 * max(len(p) for p in prompts))
    events = Events()
    with engine._wake:  # all eight wait before the engine looks: one burst
        sinks = [events.sink(str(k)) for k in range(8)]
        for ids, sink in zip(prompts, sinks):
            engine.submit(ids, SamplingParams(temperature=0.0, max_tokens=20), sink)
    assert all(s.finished.wait(60) for s in sinks)
    firsts = [next(i for i, (name, _) in enumerate(events.log) if name == str(k)) for k in range(8)]
    # arrival order, chunk by chunk (within one chunk a row's first text may be held back a step)
    assert max(firsts[:2]) < min(firsts[6:])
    before_last = [name for name, _ in events.log[: firsts[-1]]]
    assert before_last.count("0") >= 3  # the first request was decoding while the last waited


def test_greedy_batched_equals_alone_in_this_dtype(adapter, make_engine) -> None:
    prompts = [adapter.text_prompt(long_text(3 + 4 * k, k)) for k in range(6)]
    params = [SamplingParams(temperature=0.0, max_tokens=12 + 3 * k) for k in range(6)]
    alone = make_engine(slots=1)
    expected = [run(alone, [ids], [p], Events())[0].text for ids, p in zip(prompts, params)]
    sinks = run(make_engine(slots=16), prompts, params, Events())
    assert [s.text for s in sinks] == expected
