"""The Responses API through the official SDK: plain, streamed and background responses, retrieve,
cancel, delete, input items, previous_response_id chains, the function-call round trip, resume
with starting_after on another gateway, and the end of a job whose worker dies.  Every body and
stream event is checked against OpenAI's schemas."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from protocol import slots_key
from tests.integration.processes import Gateway, Worker, eventually, live_worker
from tests.integration.sse import sse_messages
from tests.spec import assert_valid

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}  # fmt: skip
CALL_TEXT = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


@pytest.fixture(scope="module")
def fast_worker(env, workdir, redis_server) -> Iterator[Worker]:
    with live_worker(["echo-fast"], env, workdir, redis_server.client) as worker:
        yield worker


def _client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def _raw(response) -> dict:
    body = response.model_dump(mode="json", exclude_unset=True)
    assert_valid(body, "Response")
    return body


def _wait(client: openai.OpenAI, response_id: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        got = client.responses.retrieve(response_id)
        _raw(got)
        if got.status not in ("queued", "in_progress") or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_a_response_and_its_background_twin_give_the_same_output(gateway, client) -> None:
    ask = {"model": "tiny-a", "input": "Tell me a story.", "instructions": "Be brief.", "max_output_tokens": 12,
           "temperature": 0, "metadata": {"k": "v"}}  # fmt: skip
    plain = client.responses.create(**ask)
    body = _raw(plain)
    assert plain.status in ("completed", "incomplete") and plain.output_text
    assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] <= 12
    assert body["metadata"] == {"k": "v"} and body["instructions"] == "Be brief."
    queued = client.responses.create(**ask, background=True)
    assert queued.status == "queued" and queued.background
    _raw(queued)
    done = _wait(client, queued.id)
    assert done.status == plain.status and done.output_text == plain.output_text
    assert done.usage.output_tokens == plain.usage.output_tokens
    again = client.responses.retrieve(plain.id)  # stored by default
    assert again.output_text == plain.output_text
    items = client.responses.input_items.list(plain.id)
    assert_valid(items.model_dump(mode="json", exclude_unset=True), "ResponseItemList")
    assert [i.content[0].text for i in items.data] == ["Tell me a story."]
    assert client.responses.delete(plain.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(plain.id)


def test_a_streamed_response_emits_the_typed_event_sequence(gateway, client) -> None:
    with client.responses.stream(model="tiny-a", input="Hello", max_output_tokens=8, temperature=0) as stream:
        events = list(stream)
    final = events[-1].response  # the SDK's get_final_response() wants response.completed, not .incomplete
    for event in events:
        assert_valid(event.model_dump(mode="json", exclude_unset=True), "ResponseStreamEvent")
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]  # fmt: skip
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          types[-1]] and types[-1] in ("response.completed", "response.incomplete")  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text
    plain = client.responses.create(model="tiny-a", input="Hello", max_output_tokens=8, temperature=0)
    assert plain.output_text == final.output_text


def test_previous_response_id_chains_three_turns(gateway, fast_worker) -> None:
    client = _client(gateway)
    first = client.responses.create(model="echo-fast", input="alpha", max_output_tokens=64, temperature=0)
    second = client.responses.create(model="echo-fast", input="beta", previous_response_id=first.id,
                                     max_output_tokens=64, temperature=0)  # fmt: skip
    third = client.responses.create(model="echo-fast", input="gamma", previous_response_id=second.id,
                                    max_output_tokens=200, temperature=0)  # fmt: skip
    _raw(third)
    # The echo model repeats its whole prompt: each turn sees the earlier ones, in order.
    assert third.output_text.startswith("alpha\nalpha")
    assert third.output_text.index("beta") < third.output_text.index("gamma")
    assert third.previous_response_id == second.id
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.create(model="echo-fast", input="x", previous_response_id="resp_nope")
    assert error.value.body["param"] == "previous_response_id"


def test_a_function_call_round_trip(gateway, fast_worker) -> None:
    client = _client(gateway)
    # The echo model repeats its prompt: asked to, it "writes" exactly one call.
    asked = client.responses.create(model="echo-fast", input=CALL_TEXT, tools=[WEATHER],
                                    max_output_tokens=len(CALL_TEXT), temperature=0)  # fmt: skip
    _raw(asked)
    calls = [item for item in asked.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Paris"}
    answered = client.responses.create(  # no tools this turn: the echo's text stays text
        model="echo-fast", previous_response_id=asked.id, max_output_tokens=300, temperature=0,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}],
    )  # fmt: skip
    _raw(answered)
    assert "sunny, 21 C" in answered.output_text  # the tool's output reached the model's prompt
    with client.responses.stream(model="echo-fast", input=CALL_TEXT, tools=[WEATHER],
                                 max_output_tokens=len(CALL_TEXT), temperature=0) as stream:  # fmt: skip
        events = list(stream)
    for event in events:
        assert_valid(event.model_dump(mode="json", exclude_unset=True), "ResponseStreamEvent")
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and json.loads(done[0].arguments) == {"city": "Paris"}


def test_a_background_stream_resumes_with_starting_after_on_another_gateway(gateway, other_gateway) -> None:
    ask = {"model": "echo-slow", "input": "resume this response", "max_output_tokens": 30, "temperature": 0,
           "background": True, "stream": True}  # fmt: skip
    with httpx.stream("POST", f"{gateway.base_url}/v1/responses", json=ask, timeout=60) as response:
        assert response.status_code == 200
        first = sse_messages(response.iter_lines(), limit=8)
    response_id = json.loads(first[0]["data"])["response"]["id"]
    last = json.loads(first[-1]["data"])["sequence_number"]
    with httpx.stream("GET", f"{other_gateway.base_url}/v1/responses/{response_id}",
                      params={"stream": "true", "starting_after": last}, timeout=60) as response:  # fmt: skip
        assert response.status_code == 200
        rest = sse_messages(response.iter_lines())
    events = [json.loads(m["data"]) for m in first + rest]
    for event in events:
        assert_valid(event, "ResponseStreamEvent")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    final = _wait(_client(other_gateway), response_id)
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    assert text == final.output_text and len(text) == 30
    plain = _client(gateway).responses.create(model="echo-slow", input="resume this response", max_output_tokens=30,
                                              temperature=0)  # an uninterrupted run  # fmt: skip
    assert text == plain.output_text


def test_cancel_stops_a_background_job_and_frees_its_slot(gateway, redis_server, slow_worker) -> None:
    client = _client(gateway)
    job = client.responses.create(model="echo-slow", input="a long one", max_output_tokens=2000, background=True)
    assert eventually(lambda: client.responses.retrieve(job.id).status == "in_progress", timeout=10)
    cancelled = client.responses.cancel(job.id)
    _raw(cancelled)
    assert cancelled.status == "cancelled"
    assert eventually(lambda: redis_server.client.hget(slots_key("echo-slow"), slow_worker.name) == b"4/4", timeout=5)
    assert client.responses.retrieve(job.id).status == "cancelled"


def test_a_background_job_whose_worker_dies_fails(gateway, env, workdir, redis_server) -> None:
    client = _client(gateway)
    worker = Worker(["echo-stuck"], env, workdir)
    try:
        worker.wait_live(redis_server.client, 120)
        job = client.responses.create(model="echo-stuck", input="x", max_output_tokens=100, background=True)
        assert eventually(lambda: client.responses.retrieve(job.id).status == "in_progress", timeout=15)
        worker.stop(signal.SIGKILL)
        killed = time.monotonic()
        got = _wait(client, job.id, timeout=20)
        assert got.status == "failed" and "stopped" in got.error.message
        assert time.monotonic() - killed < 3 + 5  # heartbeat TTL, then the next read
        _raw(got)
    finally:
        worker.stop(signal.SIGKILL)


def test_a_background_job_survives_a_gateway_restart(env, workdir, redis_server, slow_worker) -> None:
    first = Gateway(env, workdir)
    try:
        job = _client(first).responses.create(model="echo-slow", input="outlive the gateway", max_output_tokens=40,
                                              temperature=0, background=True)  # fmt: skip
    finally:
        first.stop()
    second = Gateway(env, workdir)
    try:
        done = _wait(_client(second), job.id)
        assert done.status == "incomplete" and len(done.output_text) == 40  # max_output_tokens reached
    finally:
        second.stop()


@pytest.mark.parametrize("extra,param", [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]},
     "input[0].content[0].type"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
    ({"include": ["file_search_call.results"]}, "include[0]"),
    ({"background": True, "store": False}, "store"),
    ({"text": {"format": {"type": "json_schema", "name": "bad name!", "schema": {}}}}, "text.format.name"),
])  # fmt: skip
def test_unsupported_features_are_a_400_naming_the_parameter(gateway, extra, param) -> None:
    reply = httpx.post(f"{gateway.base_url}/v1/responses", json={"model": "tiny-a", "input": "x", **extra}, timeout=30)
    assert reply.status_code == 400, reply.text
    assert_valid(reply.json(), "ErrorResponse")
    assert reply.json()["error"]["param"] == param
