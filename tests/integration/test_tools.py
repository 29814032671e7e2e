"""Tool calls and response_format through the whole stack with the openai SDK.  The echo model
repeats the conversation, so a user message that is a tool call becomes a reply that is one:
this exercises the parsing, streaming and shapes; prompting real models is unit-tested."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from tests.integration.processes import Worker, live_worker
from tests.integration.sse import chunks, post_stream
from tests.spec import assert_valid

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip
CALL = 'Checking.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
ASK = [{"role": "user", "content": CALL}]


@pytest.fixture(scope="module")
def echo_worker(env, workdir, redis_server, gateway) -> Iterator[Worker]:
    with live_worker(["echo-fast"], env, workdir, redis_server.client) as worker:
        yield worker


def test_a_tool_call_in_the_reply_becomes_message_tool_calls(client: openai.OpenAI, echo_worker) -> None:
    raw = client.chat.completions.with_raw_response.create(model="echo-fast", messages=ASK, tools=TOOLS,
                                                           max_tokens=len(CALL))  # fmt: skip
    assert_valid(raw.http_response.json(), "CreateChatCompletionResponse")
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_tool_calls_stream_as_delta_tool_calls_and_never_as_text(gateway, echo_worker) -> None:
    body = {"model": "echo-fast", "messages": ASK, "tools": TOOLS, "max_tokens": len(CALL), "stream": True}
    status, payloads, _ = post_stream(gateway.base_url, "/v1/chat/completions", body)
    assert status == 200
    parsed = chunks(payloads)
    for chunk in parsed:
        assert_valid(chunk, "CreateChatCompletionStreamResponse")
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in parsed)
    calls = [t for c in parsed for t in c["choices"][0]["delta"].get("tool_calls") or []]
    assert text == "Checking." and "<tool_call>" not in text
    assert [(t["index"], t["function"]["name"]) for t in calls] == [(0, "get_weather")]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert parsed[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_a_call_after_a_mention_of_the_tag_is_kept(client: openai.OpenAI, gateway, echo_worker) -> None:
    mention = "I reply in a <tool_call> block."
    ask = [{"role": "user", "content": f"{mention} {CALL}"}]
    size = len(ask[0]["content"])
    reply = client.chat.completions.create(model="echo-fast", messages=ask, tools=TOOLS, max_tokens=size)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == f"{mention} Checking."
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Paris"}
    body = {"model": "echo-fast", "messages": ask, "tools": TOOLS, "max_tokens": size, "stream": True}
    status, payloads, _ = post_stream(gateway.base_url, "/v1/chat/completions", body)
    parsed = chunks(payloads)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in parsed)
    calls = [t for c in parsed for t in c["choices"][0]["delta"].get("tool_calls") or []]
    assert status == 200 and text == f"{mention} Checking." and '"city"' not in text
    assert [t["function"]["name"] for t in calls] == ["get_weather"]


def test_with_tool_choice_none_the_text_stays_text(client: openai.OpenAI, echo_worker) -> None:
    reply = client.chat.completions.create(model="echo-fast", messages=ASK, tools=TOOLS, tool_choice="none",
                                           max_tokens=len(CALL))  # fmt: skip
    assert reply.choices[0].message.content == CALL and not reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "length"


def test_a_conversation_with_a_tool_round_trip_is_accepted(client: openai.OpenAI, echo_worker) -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    ]  # fmt: skip
    reply = client.chat.completions.create(model="echo-fast", messages=messages, tools=TOOLS, max_tokens=40)
    assert "18 C, sunny" in reply.choices[0].message.content  # the tool's result reached the model


def test_a_model_that_cannot_hold_to_a_grammar_refuses_response_format(client: openai.OpenAI, echo_worker) -> None:
    """The echo model has no vocabulary a grammar could mask: a 400 naming the parameter, not
    free text where JSON was promised."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="echo-fast", messages=[{"role": "user", "content": "hi"}],
                                       response_format={"type": "json_object"}, max_tokens=200)  # fmt: skip
    assert caught.value.body["param"] == "response_format"
    assert "structured output" in caught.value.body["message"]
