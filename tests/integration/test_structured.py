"""Structured outputs with the default model through the whole stack, from real clients: twenty
JSON schemas at temperature 0 and 0.8, the openai SDK's `parse`, LangChain's
`with_structured_output`, instructor, forced tool calls (streamed and not), vLLM's guided_*
extensions; a bad schema is a 400 before anything is queued."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from bench.schemas import SCHEMAS
from tests.conftest import DEFAULT_MODEL_FILE
from tests.integration.processes import Worker, live_worker

pytestmark = pytest.mark.default_model
MODEL = "smollm2-135m"
MAX_TOKENS = 300


@pytest.fixture
def client(client: openai.OpenAI) -> openai.OpenAI:
    """The shared client, patient: a CPU writes a few hundred tokens per reply here."""
    return client.with_options(timeout=600)


@pytest.fixture(scope="module")
def smollm_worker(env, workdir, redis_server, gateway) -> Iterator[Worker]:
    if not DEFAULT_MODEL_FILE.exists():
        pytest.fail(f"{DEFAULT_MODEL_FILE} is missing: `make model` fetches it")
    with live_worker([MODEL], env, workdir, redis_server.client, timeout=240) as worker:
        yield worker


def _ask_schema(client: openai.OpenAI, name: str, schema: dict, prompt: str, temperature: float) -> tuple[str, str]:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], temperature=temperature, seed=7,
        max_tokens=MAX_TOKENS, response_format={"type": "json_schema", "json_schema": {"name": name, "schema": schema}},
    )  # fmt: skip
    return reply.choices[0].message.content, reply.choices[0].finish_reason


@pytest.mark.timeout(900)  # 20 replies of up to 300 tokens on a CPU
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_every_output_of_twenty_schemas_validates(client: openai.OpenAI, smollm_worker, temperature: float) -> None:
    with ThreadPoolExecutor(len(SCHEMAS)) as pool:
        replies = list(pool.map(lambda s: _ask_schema(client, *s, temperature), SCHEMAS))
    invalid = []
    for (name, schema, _), (text, finish) in zip(SCHEMAS, replies):
        try:
            jsonschema.validate(json.loads(text), schema)
        except (ValueError, jsonschema.ValidationError) as exc:
            invalid.append((name, finish, str(exc)[:100], text[:200]))
    assert not invalid, invalid


def test_a_streamed_json_schema_reply_parses(client: openai.OpenAI, smollm_worker) -> None:
    name, schema, prompt = SCHEMAS[8]  # a nested object with an array of enums
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": name, "schema": schema}},
    )  # fmt: skip
    jsonschema.validate(json.loads("".join(c.choices[0].delta.content or "" for c in stream if c.choices)), schema)


class City(BaseModel):
    name: str
    country: str
    population: int = Field(ge=0, le=100_000_000)  # bounded: unbounded digits let a greedy 135M model repeat zeros


class Weather(BaseModel):
    city: str
    unit: Literal["celsius", "fahrenheit"]


PARIS = "Paris is the capital of France and has about 2 million inhabitants. Describe the city."


def test_the_openai_sdk_parse_returns_the_model(client: openai.OpenAI, smollm_worker) -> None:
    reply = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": PARIS}],
                                          response_format=City, max_tokens=MAX_TOKENS)  # fmt: skip
    assert isinstance(reply.choices[0].message.parsed, City)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_with_structured_output(gateway, smollm_worker, method: str) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=f"{gateway.base_url}/v1", api_key="unused", temperature=0,
                     max_tokens=MAX_TOKENS, max_retries=0, timeout=600)  # fmt: skip
    answer = llm.with_structured_output(City, method=method).invoke(PARIS)
    assert isinstance(answer, City)


@pytest.mark.parametrize("mode", ["JSON_SCHEMA", "TOOLS"])
def test_instructor(client: openai.OpenAI, smollm_worker, mode: str) -> None:
    import instructor

    patched = instructor.from_openai(client, mode=getattr(instructor.Mode, mode))
    answer = patched.chat.completions.create(model=MODEL, response_model=Weather, max_retries=0, max_tokens=MAX_TOKENS,
                                             messages=[{"role": "user", "content": "It is 21 C in Madrid."}])  # fmt: skip
    assert isinstance(answer, Weather)


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                                          "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "get_time", "description": "The local time in a time zone",
                                      "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                                                     "required": ["zone"]}}},
]  # fmt: skip
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def _calls(client: openai.OpenAI, choice: object, stream: bool, temperature: float) -> list[tuple[str, str, str]]:
    """(finish_reason, function name, arguments) of each call in the reply."""
    kwargs = {"model": MODEL, "tools": TOOLS, "tool_choice": choice, "max_tokens": MAX_TOKENS, "seed": 3,
              "temperature": temperature, "messages": [{"role": "user", "content": "How warm is it in Oslo?"}]}  # fmt: skip
    if not stream:
        reply = client.chat.completions.create(**kwargs).choices[0]
        return [(reply.finish_reason, c.function.name, c.function.arguments) for c in reply.message.tool_calls or []]
    calls: dict[int, list[str]] = {}
    finish = None
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for choice_delta in chunk.choices:
            finish = choice_delta.finish_reason or finish
            for call in choice_delta.delta.tool_calls or []:
                entry = calls.setdefault(call.index, ["", ""])
                entry[0] += (call.function.name or "") if call.function else ""
                entry[1] += (call.function.arguments or "") if call.function else ""
    return [(finish, name, arguments) for name, arguments in calls.values()]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}],
                         ids=["required", "named"])  # fmt: skip
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_forced_tool_calls_parse_and_validate(client: openai.OpenAI, smollm_worker, choice, stream: bool,
                                              temperature: float) -> None:  # fmt: skip
    calls = _calls(client, choice, stream, temperature)
    assert len(calls) == 1, calls
    finish, name, arguments = calls[0]
    assert finish == "tool_calls"
    if isinstance(choice, dict):
        assert name == "get_time"
    jsonschema.validate(json.loads(arguments), PARAMETERS[name])


@pytest.mark.parametrize(
    ("extension", "check"),
    [
        ({"guided_choice": ["red", "green", "blue"]}, lambda t: t in ("red", "green", "blue")),
        ({"guided_regex": r"[A-Z][a-z]{2,8} [0-9]{4}"}, lambda t: re.fullmatch(r"[A-Z][a-z]{2,8} [0-9]{4}", t)),
        ({"guided_grammar": 'root ::= "yes" | "no"'}, lambda t: t in ("yes", "no")),  # GBNF
        ({"guided_grammar": 'start: "(" NUMBER ")"\nNUMBER: /[0-9]+/'}, lambda t: re.fullmatch(r"\([0-9]+\)", t)),
        ({"guided_json": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}},
         lambda t: isinstance(json.loads(t)["n"], int)),
        ({"structured_outputs": {"choice": ["up", "down"]}}, lambda t: t in ("up", "down")),
        ({"structured_outputs": {"json_object": True}}, lambda t: isinstance(json.loads(t), dict)),
        ({"response_format": {"type": "json_object"}}, lambda t: isinstance(json.loads(t), dict)),
    ],
    ids=["choice", "regex", "gbnf", "lark", "guided_json", "so_choice", "so_json_object", "response_format"],
)
def test_completions_follow_the_vllm_extensions(client: openai.OpenAI, smollm_worker, extension, check) -> None:
    reply = client.completions.create(model=MODEL, prompt="Answer: ", max_tokens=60, temperature=0.8, seed=1,
                                      extra_body=extension)  # fmt: skip
    assert check(reply.choices[0].text), reply.choices[0].text


def test_free_rows_are_untouched_by_constrained_neighbours(client: openai.OpenAI, smollm_worker) -> None:
    free = {"model": MODEL, "messages": [{"role": "user", "content": "Name three colours."}], "temperature": 0,
            "max_tokens": 48}  # fmt: skip
    alone = client.chat.completions.create(**free).choices[0].message.content
    name, schema, prompt = SCHEMAS[0]
    held = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 48,
            "response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}}  # fmt: skip
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client.chat.completions.create, **(free if k % 2 else held)) for k in range(8)]
        texts = [f.result().choices[0].message.content for f in futures]
    assert texts[1::2] == [alone] * 4
    for text in texts[0::2]:
        jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strnig"}}}},
         "response_format.json_schema.schema"),
        ({"guided_regex": "a(b"}, "guided_regex"),
        ({"guided_grammar": "start: undefined_rule"}, "guided_grammar"),
        ({"guided_json": "{not json"}, "guided_json"),
        ({"guided_choice": ["a"], "guided_regex": "a"}, "guided_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}],
          "tool_choice": "required"}, "tools"),
    ],
    ids=["schema", "regex", "grammar", "json_text", "two", "tool_parameters"],
)
def test_a_bad_schema_or_grammar_is_a_400_before_queueing(client: openai.OpenAI, extra: dict, param: str) -> None:
    """tiny-idle has no worker: the answer can only come from the gateway's own check."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny-idle", messages=[{"role": "user", "content": "hi"}],
                                       extra_body=extra)  # fmt: skip
    assert caught.value.body["param"] == param
    assert caught.value.body["type"] == "invalid_request_error"
