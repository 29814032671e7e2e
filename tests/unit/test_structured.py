"""Structured outputs at the gateway: every way a request asks for one becomes one grammar,
checked before anything is queued; the grammars accept what they should and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import llguidance
import llguidance.hf
import pytest

from bench.schemas import SCHEMAS
from gateway.completion_request import CreateCompletionRequest
from gateway.errors import InvalidRequest
from gateway.openai_types import CreateChatCompletionRequest
from gateway.responses_request import CreateResponseRequest
from gateway.structured import JSON_STYLE, tool_call
from protocol import Constraint
from tests.tiny_models import write_tiny_tokenizer

HI = [{"role": "user", "content": "hi"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}  # fmt: skip
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    return write_tiny_tokenizer(Path(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def ll_tokenizer(tokenizer):
    return llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer), eos_token=tokenizer.eos_token_id)


def accepts(ll_tokenizer, tokenizer, constraint: Constraint, text: str) -> bool:
    """Whether the grammar takes `text` whole and may end after it."""
    matcher = llguidance.LLMatcher(ll_tokenizer, constraint.grammar)
    ids = tokenizer.encode(text, add_special_tokens=False)
    return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()


def chat(**fields) -> Constraint | None:
    return CreateChatCompletionRequest(model="m", messages=HI, **fields).to_jobs(1.0)[0].constraint


def completion(**fields) -> Constraint | None:
    return CreateCompletionRequest(model="m", prompt="x", **fields).to_jobs(1.0)[0].constraint


def test_each_way_of_asking_names_its_kind_and_parameter() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    cases = [
        (chat(response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}),
         "json_schema", "response_format.json_schema.schema"),
        (chat(response_format={"type": "json_object"}), "json_schema", "response_format"),
        (chat(tools=[WEATHER, TIME], tool_choice="required"), "tool_call", "tool_choice"),
        (chat(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}}),
         "tool_call", "tool_choice"),
        (chat(guided_json=schema), "json_schema", "guided_json"),
        (chat(guided_json=json.dumps(schema)), "json_schema", "guided_json"),
        (completion(guided_regex="[0-9]+"), "regex", "guided_regex"),
        (completion(guided_choice=["a", "b"]), "choice", "guided_choice"),
        (completion(guided_grammar='root ::= "a"'), "grammar", "guided_grammar"),
        (completion(structured_outputs={"json": schema}), "json_schema", "structured_outputs.json"),
        (completion(structured_outputs={"json_object": True}), "json_schema", "structured_outputs.json_object"),
        (completion(response_format={"type": "json_object"}), "json_schema", "response_format"),
    ]  # fmt: skip
    for constraint, kind, param in cases:
        assert constraint is not None and (constraint.kind, constraint.param) == (kind, param)
    assert chat() is None and chat(tools=[WEATHER]) is None and chat(tools=[WEATHER], tool_choice="none") is None
    assert chat(response_format={"type": "text"}) is None and completion() is None


def test_responses_text_format_and_forced_tools_constrain_too() -> None:
    body = {"model": "m", "input": "hi", "text": {"format": {"type": "json_schema", "name": "s",
                                                             "schema": {"type": "object"}}}}  # fmt: skip
    job = CreateResponseRequest(**body).job(_settings(), "resp_1", [])
    assert job.constraint is not None and job.constraint.param == "text.format.json_schema.schema"
    tools = [{"type": "function", "name": "get_time", "parameters": {"type": "object"}}]
    job = CreateResponseRequest(model="m", input="hi", tools=tools, tool_choice="required").job(_settings(), "r", [])
    assert job.constraint is not None and job.constraint.kind == "tool_call"


def _settings():
    from gateway.settings import GatewaySettings

    return GatewaySettings()


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"guided_regex": "a(b"}, "guided_regex"),
        ({"guided_json": {"type": "strnig"}}, "guided_json"),
        ({"guided_json": "{oops"}, "guided_json"),
        ({"guided_json": "[1, 2]"}, "guided_json"),
        ({"guided_grammar": "start: nowhere"}, "guided_grammar"),
        ({"guided_grammar": 'root ::= "unterminated'}, "guided_grammar"),
        ({"guided_choice": []}, "guided_choice"),
        ({"guided_choice": ["a"], "guided_regex": "a"}, "guided_choice"),
        ({"guided_decoding_backend": "xgrammar"}, "guided_decoding_backend"),
        ({"guided_whitespace_pattern": " *"}, "guided_whitespace_pattern"),
        ({"structured_outputs": {}}, "structured_outputs"),
        ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "strnig"}}}},
         "response_format.json_schema.schema"),
        ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ],
)
def test_what_cannot_be_compiled_is_a_400_naming_the_parameter(fields: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat(**fields)
    assert caught.value.param == param


def test_a_forced_call_with_a_broken_parameters_schema_names_tools() -> None:
    broken = {"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}
    with pytest.raises(InvalidRequest) as caught:
        chat(tools=[broken], tool_choice="required")
    assert caught.value.param == "tools"


def test_json_schemas_take_valid_documents_in_the_house_style_only(ll_tokenizer, tokenizer) -> None:
    person = chat(guided_json=SCHEMAS[0][1])
    assert accepts(ll_tokenizer, tokenizer, person, '{"name": "Alice", "age": 31}')
    assert not accepts(ll_tokenizer, tokenizer, person, '{"name": "Alice", "age": 151}')  # maximum 150
    assert not accepts(ll_tokenizer, tokenizer, person, '{"name": "Alice"}')  # age is required
    assert not accepts(ll_tokenizer, tokenizer, person, '{"name": "Alice",\n\n "age": 31}')  # no free whitespace
    shape = chat(guided_json=SCHEMAS[10][1])  # anyOf
    assert accepts(ll_tokenizer, tokenizer, shape, '{"kind": "circle", "radius": 2}')
    assert not accepts(ll_tokenizer, tokenizer, shape, '{"kind": "circle", "width": 2}')
    assert accepts(ll_tokenizer, tokenizer, chat(response_format={"type": "json_object"}), '{"any": [1, {"x": null}]}')
    assert not accepts(ll_tokenizer, tokenizer, chat(response_format={"type": "json_object"}), "[1, 2]")


def test_choices_regexes_and_grammars_take_exactly_their_language(ll_tokenizer, tokenizer) -> None:
    options = completion(guided_choice=["yes", 'say "no"', "a/b\\c"])
    for option in ("yes", 'say "no"', "a/b\\c"):
        assert accepts(ll_tokenizer, tokenizer, options, option)
    assert not accepts(ll_tokenizer, tokenizer, options, "maybe")
    date = completion(guided_regex=r"[0-9]{4}-[0-9]{2}")
    assert accepts(ll_tokenizer, tokenizer, date, "2026-11") and not accepts(ll_tokenizer, tokenizer, date, "26-11")
    gbnf = completion(guided_grammar='root ::= "(" [0-9]+ ")"')
    assert accepts(ll_tokenizer, tokenizer, gbnf, "(42)") and not accepts(ll_tokenizer, tokenizer, gbnf, "(4a)")


def test_a_forced_call_is_one_tool_call_block_of_an_offered_tool(ll_tokenizer, tokenizer) -> None:
    functions = [WEATHER["function"], TIME["function"]]
    anyone = tool_call(functions, None, parallel=False)
    weather = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    assert accepts(ll_tokenizer, tokenizer, anyone, weather)
    assert accepts(ll_tokenizer, tokenizer, anyone, '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
    assert not accepts(ll_tokenizer, tokenizer, anyone, weather.replace('"city"', '"town"'))  # city is required
    assert not accepts(ll_tokenizer, tokenizer, anyone, weather.replace("get_weather", "get_news"))
    assert not accepts(ll_tokenizer, tokenizer, anyone, f"{weather}\n{weather}")  # one call unless parallel
    assert accepts(ll_tokenizer, tokenizer, tool_call(functions, None, parallel=True), f"{weather}\n{weather}")
    named = tool_call(functions, "get_time", parallel=False)
    assert not accepts(ll_tokenizer, tokenizer, named, weather)


def test_the_json_style_is_applied_to_every_schema_and_user_options_win() -> None:
    grammar = json.loads(chat(guided_json={"type": "object", "x-guidance": {"item_separator": ","}}).grammar)
    options = grammar["grammars"][0]["json_schema"]["x-guidance"]
    assert options == {**JSON_STYLE, "item_separator": ","}
