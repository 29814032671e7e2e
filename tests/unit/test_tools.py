"""Tool calling: the prompt side (adapters/tools.py), the parsing side (gateway/tool_calls.py)
and the request fields that carry tools and response_format into a job."""

from __future__ import annotations

import json

import pytest

from adapters.hf_causal import HfCausalAdapter
from gateway.errors import InvalidRequest
from gateway.openai_types import CreateChatCompletionRequest
from gateway.tool_calls import ToolStreamFilter, parse_tool_calls
from protocol import ChatMessage, ToolCall

NAMES = frozenset({"get_weather", "add"})
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WEATHER = {"name": "get_weather", "description": "Weather now", "parameters": {"type": "object",
           "properties": {"city": {"type": "string"}}, "required": ["city"]}}  # fmt: skip


def test_tool_call_blocks_are_parsed_and_the_rest_is_content() -> None:
    content, calls = parse_tool_calls(f"Let me check.\n{CALL}\n{CALL.replace('Paris', 'Rome')}", NAMES)
    assert content == "Let me check."
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    assert len({c["id"] for c in calls}) == 2


def test_a_bare_json_call_an_unclosed_block_and_nonsense() -> None:
    assert parse_tool_calls('{"name": "add", "parameters": {"a": 1}}', NAMES)[1][0]["function"]["arguments"] == '{"a": 1}'
    assert parse_tool_calls('<tool_call>{"name": "add", "arguments": {}}', NAMES)[1][0]["function"]["name"] == "add"
    assert parse_tool_calls('{"name": "rm_rf", "arguments": {}}', NAMES) == ('{"name": "rm_rf", "arguments": {}}', [])
    assert parse_tool_calls("<tool_call>not json</tool_call>", NAMES) == ("<tool_call>not json</tool_call>", [])
    assert parse_tool_calls("Paris.", NAMES) == ("Paris.", [])


MENTION = "I will answer with a <tool_call> block, as asked."


def test_a_reply_that_mentions_the_tag_before_a_call_keeps_the_call() -> None:
    content, calls = parse_tool_calls(f"{MENTION}\n{CALL}", NAMES)
    assert content == MENTION  # the mention is prose; the call's syntax is gone
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris"}]
    content, calls = parse_tool_calls(f"{CALL} Then I wrote <tool_call> again.", NAMES)
    assert content is None and len(calls) == 1


@pytest.mark.parametrize("size", [1, 4, 9])
def test_the_stream_filter_keeps_a_call_after_a_mention_of_the_tag(size: int) -> None:
    text = f"{MENTION} {CALL}"
    stream = ToolStreamFilter(NAMES)
    shown = "".join(stream.push(text[i : i + size]) for i in range(0, len(text), size)) + stream.finish()
    assert shown == MENTION and [c["function"]["name"] for c in stream.calls] == ["get_weather"]
    assert '"city"' not in shown


@pytest.mark.parametrize("size", [1, 3, 7])
def test_the_stream_filter_never_leaks_call_syntax_as_content(size: int) -> None:
    text = f"Sure. {CALL}"
    stream = ToolStreamFilter(NAMES)
    shown = "".join(stream.push(text[i : i + size]) for i in range(0, len(text), size))
    shown += stream.finish()
    assert shown == "Sure. " and stream.calls[0]["function"]["name"] == "get_weather"


def test_the_stream_filter_passes_plain_text_and_releases_a_false_alarm() -> None:
    stream = ToolStreamFilter(NAMES)
    text = "Use <tool or {braces} freely."
    shown = "".join(stream.push(ch) for ch in text) + stream.finish()
    assert shown == text and stream.calls == []
    held = ToolStreamFilter(NAMES)
    assert held.push('{"not": "a call"}') == ""  # could have been a bare call: held back ...
    assert held.finish() == '{"not": "a call"}'  # ... and released as content at the end


def test_a_template_without_tools_gets_them_as_a_system_message(adapter: HfCausalAdapter) -> None:
    messages = (ChatMessage(role="user", content="Weather in Paris?"),)
    text = adapter.tokenizer.decode(adapter.chat_prompt(messages, (WEATHER,), "required"))
    assert not adapter.native_tools
    assert text.startswith("<|im_start|>system\nYou can call functions.") and '"get_weather"' in text
    assert "You must call at least one function." in text and text.endswith("<|im_start|>assistant\n")


def test_earlier_calls_and_tool_results_are_rendered_as_text_without_native_tools(adapter) -> None:
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    messages = (ChatMessage(role="user", content="Weather?"), ChatMessage(role="assistant", content="", tool_calls=(call,)),
                ChatMessage(role="tool", content="18 C", tool_call_id="call_1"))  # fmt: skip
    text = adapter.tokenizer.decode(adapter.chat_prompt(messages, (WEATHER,)))
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<|im_start|>user\n<tool_response>\n18 C\n</tool_response>" in text


def test_a_template_that_knows_tools_receives_them(adapter: HfCausalAdapter) -> None:
    own_template = adapter.tokenizer.chat_template
    adapter.tokenizer.chat_template = (
        "{% if tools %}TOOLS:{% for t in tools %}{{ t['function']['name'] }};{% endfor %}\n{% endif %}"
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    )
    try:
        text = adapter.tokenizer.decode(adapter.chat_prompt((ChatMessage(role="user", content="Hi"),), (WEATHER,)))
        assert adapter.native_tools and text.startswith("TOOLS:get_weather;") and "user: Hi" in text
    finally:
        adapter.tokenizer.chat_template = own_template


def _chat(**fields) -> CreateChatCompletionRequest:
    return CreateChatCompletionRequest(model="m", messages=[{"role": "user", "content": "Hi"}], **fields)


def test_tools_and_tool_choice_reach_the_job() -> None:
    tools = [{"type": "function", "function": WEATHER}]
    job = _chat(tools=tools).to_jobs(1.0)[0]
    assert job.tools == (WEATHER,) and job.tool_choice == "auto"
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert _chat(tools=tools, tool_choice=named).to_jobs(1.0)[0].tool_choice == "get_weather"
    assert _chat(tools=tools, tool_choice="none").to_jobs(1.0)[0].tools is None
    assert _chat(tools=tools, tool_choice="none").offered_tools == frozenset()


@pytest.mark.parametrize(
    "fields,param",
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": WEATHER}],
          "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [{"type": "function", "function": WEATHER}] * 2}, "tools"),
        ({"messages": [{"role": "tool", "content": "18 C"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
    ],
)  # fmt: skip
def test_inconsistent_tool_fields_are_400_naming_them(fields: dict, param: str) -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    with pytest.raises(InvalidRequest) as info:
        CreateChatCompletionRequest(**{**base, **fields})
    assert info.value.param == param


def test_response_format_becomes_a_system_instruction() -> None:
    job = _chat(response_format={"type": "json_object"}).to_jobs(1.0)[0]
    assert job.messages[0].role == "system" and "JSON object" in job.messages[0].content
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    job = CreateChatCompletionRequest(model="m", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}],
                                      response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}).to_jobs(1.0)[0]  # fmt: skip
    assert job.messages[0].content.startswith("Be brief.\n\n") and json.dumps(schema) in job.messages[0].content
    assert len(_chat(response_format={"type": "text"}).to_jobs(1.0)[0].messages) == 1
