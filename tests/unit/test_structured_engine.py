"""Grammar-constrained decoding in the batch engine, on the tiny random model (the worst case: its
likeliest tokens are noise): constrained rows come out in their grammar, free rows in the same
batch come out exactly as they do alone, a reply near its token limit closes, and what cannot be
constrained is refused before it starts."""

from __future__ import annotations

import json
import re
import threading

import jsonschema
import pytest

from adapters import AdapterError, UnsupportedParameter
from adapters.echo import EchoAdapter
from gateway.completion_request import CreateCompletionRequest
from gateway.structured import tool_call
from protocol import Constraint, GenerateJob, ModelSpec, SamplingParams, Usage

ENUMS = {"type": "object", "properties": {"colour": {"enum": ["red", "green"]}, "ok": {"type": "boolean"},
                                          "size": {"type": "integer", "minimum": 1, "maximum": 9}},
         "required": ["colour", "ok", "size"], "additionalProperties": False}  # fmt: skip
OPEN_ENDED = {"type": "object", "properties": {"words": {"type": "array", "items": {"type": "string"}}},
              "required": ["words"]}  # fmt: skip


class Sink:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.finished = threading.Event()
        self.finish: str | None = None
        self.error: tuple[str, str] | None = None

    def token(self, text: str, logprobs: tuple | None = None) -> None:
        self.parts.append(text)

    def done(self, finish_reason: str, usage: Usage) -> None:
        self.finish = finish_reason
        self.finished.set()

    def error(self, code: str, message: str, param: str | None = None) -> None:  # noqa: F811 - the Sink method
        self.error = (code, message)
        self.finished.set()

    def keepalive(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(self.parts)


def completion_job(prompt: str, max_tokens: int, temperature: float = 0.0, seed: int | None = None,
                   **extension) -> GenerateJob:  # fmt: skip
    request = CreateCompletionRequest(model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=temperature,
                                      seed=seed, **extension)  # fmt: skip
    return request.to_jobs(60.0)[0]


def run_jobs(engine, jobs: list[GenerateJob]) -> list[Sink]:
    sinks = [Sink() for _ in jobs]
    for job, sink in zip(jobs, sinks):
        engine.submit_job(job, engine.prompt_ids(job), sink)
    assert all(s.finished.wait(120) for s in sinks)
    assert [s.error for s in sinks] == [None] * len(sinks)
    return sinks


@pytest.mark.parametrize(("temperature", "seed"), [(0.0, None), (1.0, 5), (1.0, 6)])
def test_constrained_rows_follow_their_grammar(make_engine, temperature: float, seed: int | None) -> None:
    engine = make_engine(slots=8)
    jobs = [
        completion_job("a", 80, temperature, seed, guided_json=ENUMS),
        completion_job("b", 40, temperature, seed, guided_choice=["alpha", "beta", "gamma delta"]),
        completion_job("c", 40, temperature, seed, guided_regex=r"[a-z]{3}-[0-9]{2}"),
        completion_job("d", 40, temperature, seed, guided_grammar='root ::= "(" ("x" | "y") ("x" | "y")? ")"'),
    ]
    enums, options, code, parens = run_jobs(engine, jobs)
    jsonschema.validate(json.loads(enums.text), ENUMS)
    assert options.text in ("alpha", "beta", "gamma delta")
    assert re.fullmatch(r"[a-z]{3}-[0-9]{2}", code.text)
    assert re.fullmatch(r"\([xy]{1,2}\)", parens.text)
    assert {s.finish for s in (enums, options, code)} == {"stop"}


def test_free_rows_beside_constrained_ones_are_as_alone(make_engine) -> None:
    engine = make_engine(slots=8)
    free = [completion_job(p, 24) for p in ("one two", "the queue", "hello")]
    alone = [s.text for s in run_jobs(engine, free)]
    mixed = [free[0], completion_job("x", 24, guided_json=ENUMS), free[1],
             completion_job("y", 24, guided_choice=["yes", "no"]), free[2]]  # fmt: skip
    together = run_jobs(engine, mixed)
    assert [together[0].text, together[2].text, together[4].text] == alone


def test_a_reply_near_its_limit_is_steered_to_close(make_engine) -> None:
    """The random model would fill an open-ended array of strings to the limit: broken JSON.
    In its last tokens only closing tokens are allowed, so it ends valid."""
    engine = make_engine(slots=4)
    sinks = run_jobs(engine, [completion_job(p, 40, 1.0, seed, guided_json=OPEN_ENDED)
                              for p, seed in (("u", 1), ("v", 2), ("w", 3))])  # fmt: skip
    for sink in sinks:
        jsonschema.validate(json.loads(sink.text), OPEN_ENDED)
        assert sink.finish == "stop"


def test_a_forced_tool_call_is_well_formed(make_engine) -> None:
    """(A completion prompt: a chat's tool instructions would not fit the tiny model's context.)"""
    functions = [{"name": "lookup", "parameters": ENUMS}, {"name": "other"}]
    jobs = [completion_job(prompt, 200).model_copy(update={"constraint": tool_call(functions, name, parallel=False)})
            for prompt, name in (("go", None), ("run", "lookup"))]  # fmt: skip
    for sink, name in zip(run_jobs(make_engine(slots=2), jobs), (None, "lookup")):
        body = re.fullmatch(r"<tool_call>\n(.*)\n</tool_call>", sink.text, re.S)
        assert body is not None, sink.text
        call = json.loads(body.group(1))
        assert call["name"] == name if name else call["name"] in ("lookup", "other")
        jsonschema.validate(call["arguments"], ENUMS if call["name"] == "lookup" else {"type": "object"})


def test_compiled_grammars_are_reused(make_engine, adapter) -> None:
    engine = make_engine(slots=2)
    grammars = adapter.grammars
    run_jobs(engine, [completion_job("a", 8, guided_choice=["p", "q"])])
    before = grammars.stats()
    run_jobs(engine, [completion_job("b", 8, guided_choice=["p", "q"]), completion_job("c", 8, guided_choice=["p", "q"])])
    after = grammars.stats()
    assert after["grammar_cache_misses"] == before["grammar_cache_misses"]
    assert after["grammar_cache_hits"] > before["grammar_cache_hits"]


def test_a_grammar_the_worker_cannot_compile_is_refused_before_it_starts(make_engine) -> None:
    job = completion_job("a", 8).model_copy(update={"constraint": Constraint(grammar="start: nowhere", kind="grammar",
                                                                             param="guided_grammar")})  # fmt: skip
    with pytest.raises(AdapterError) as caught:
        make_engine(slots=2).prompt_ids(job)
    assert caught.value.param == "guided_grammar"


def test_a_model_without_a_vocabulary_to_mask_refuses(make_engine, tmp_path) -> None:
    echo = EchoAdapter(ModelSpec(name="echo", adapter="echo"), tmp_path)
    echo.load()
    engine = make_engine(echo, slots=2)
    with pytest.raises(UnsupportedParameter) as caught:
        engine.prompt_ids(completion_job("a", 8, guided_choice=["x"]))
    assert caught.value.param == "guided_choice"
    [sink] = run_jobs(engine, [completion_job("free", 4)])  # the engine goes on
    assert sink.text == "free"


def test_penalties_and_a_grammar_together(make_engine) -> None:
    job = completion_job("a", 60, guided_json=ENUMS)
    job = job.model_copy(update={"params": job.params.model_copy(update={"frequency_penalty": 1.5})})
    [sink] = run_jobs(make_engine(slots=2), [job])
    jsonschema.validate(json.loads(sink.text), ENUMS)
    assert isinstance(job.params, SamplingParams)
