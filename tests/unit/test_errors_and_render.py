"""Errors in OpenAI's shape (through a minimal FastAPI app with the gateway's handlers), and the
response bodies the renderer builds, both checked against OpenAI's OpenAPI schemas."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.completion_request import CreateCompletionRequest
from gateway.errors import (
    InternalError,
    ModelNotFound,
    ServiceUnavailable,
    from_event,
    install_error_handlers,
)
from gateway.openai_types import CreateChatCompletionRequest
from gateway.render import ChoiceState, Envelope, TextChunks
from gateway.reply import Format
from protocol import ErrorEvent, TokenLogprob, TopLogprob, Usage
from tests.spec import assert_valid, errors_for

USER = [{"role": "user", "content": "Hi"}]
SECRET = "s3cret-detail-that-must-not-leak"


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/chat")
    async def chat(body: CreateChatCompletionRequest) -> dict[str, Any]:
        return {"model": body.model}

    @app.post("/completions")
    async def completions(body: CreateCompletionRequest) -> dict[str, Any]:
        return {"model": body.model}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(SECRET)

    @app.get("/missing-model")
    async def missing_model() -> None:
        raise ModelNotFound("nope")

    return TestClient(app, raise_server_exceptions=False)


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert_valid(body, "ErrorResponse")
    return body["error"]


def test_valid_request_passes_through(client: TestClient) -> None:
    assert client.post("/chat", json={"model": "m", "messages": USER}).json() == {"model": "m"}


def test_invalid_json_is_400_invalid_json(client: TestClient) -> None:
    response = client.post("/chat", content=b'{"model": "m", ', headers={"content-type": "application/json"})
    error = _error(response, 400)
    assert error["code"] == "invalid_json"
    assert error["type"] == "invalid_request_error"


def test_missing_model_is_400_naming_model(client: TestClient) -> None:
    error = _error(client.post("/chat", json={"messages": USER}), 400)
    assert error["param"] == "model"
    assert "model" in error["message"]


def test_missing_messages_is_400_naming_messages(client: TestClient) -> None:
    assert _error(client.post("/chat", json={"model": "m"}), 400)["param"] == "messages"


def test_wrong_role_names_the_message_and_field(client: TestClient) -> None:
    body = {"model": "m", "messages": [*USER, {"role": "wizard", "content": "x"}]}
    assert _error(client.post("/chat", json=body), 400)["param"] == "messages[1].role"
    body = {"model": "m", "messages": [{"role": "wizard", "content": "x"}]}
    assert _error(client.post("/chat", json=body), 400)["param"] == "messages[0].role"


@pytest.mark.parametrize(
    "field,value",
    [("temperature", 3), ("top_p", 2), ("max_tokens", 0), ("max_tokens", "x"), ("n", 0), ("n", 65),
     ("presence_penalty", 2.5), ("frequency_penalty", -3), ("top_logprobs", 21), ("top_k", -2)],
)  # fmt: skip
def test_out_of_range_value_is_400_naming_it(client: TestClient, field: str, value: Any) -> None:
    error = _error(client.post("/chat", json={"model": "m", "messages": USER, field: value}), 400)
    assert error["param"] == field
    assert error["code"] == "invalid_request"


def test_unsupported_feature_is_400_naming_it(client: TestClient) -> None:
    error = _error(client.post("/chat", json={"model": "m", "messages": USER, "functions": [{"name": "f"}]}), 400)
    assert error["param"] == "functions"


def test_completion_prompt_of_wrong_type_is_400_naming_prompt(client: TestClient) -> None:
    assert _error(client.post("/completions", json={"model": "m", "prompt": 5}), 400)["param"] == "prompt"


def test_body_that_is_not_an_object_is_400(client: TestClient) -> None:
    _error(client.post("/chat", json=[1, 2]), 400)


def test_invalid_stream_flag_names_stream(client: TestClient) -> None:
    error = _error(client.post("/chat", json={"model": "m", "messages": USER, "stream": "maybe"}), 400)
    assert error["param"] == "stream"


def test_invalid_stream_options_names_the_nested_field(client: TestClient) -> None:
    body = {"model": "m", "messages": USER, "stream": True, "stream_options": {"include_usage": "maybe"}}
    assert _error(client.post("/chat", json=body), 400)["param"] == "stream_options.include_usage"


def test_unexpected_exception_is_500_without_details(client: TestClient) -> None:
    response = client.get("/boom")
    error = _error(response, 500)
    assert error["type"] == "server_error"
    assert SECRET not in response.text
    assert "Traceback" not in response.text and "RuntimeError" not in response.text


def test_api_error_raised_in_a_route_keeps_its_status(client: TestClient) -> None:
    error = _error(client.get("/missing-model"), 404)
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert "nope" in error["message"]


def test_unknown_path_is_404_in_openai_shape(client: TestClient) -> None:
    error = _error(client.get("/v1/does-not-exist"), 404)
    assert error["code"] == "not_found"
    assert error["type"] == "invalid_request_error"


def test_wrong_method_is_405_in_openai_shape(client: TestClient) -> None:
    _error(client.get("/chat"), 405)


@pytest.mark.parametrize(
    "code,status,kind",
    [
        ("model_not_found", 404, "invalid_request_error"),
        ("context_length_exceeded", 400, "invalid_request_error"),
        ("invalid_request", 400, "invalid_request_error"),
        ("expired", 503, "server_error"),
        ("cancelled", 503, "server_error"),
        ("internal_error", 500, "server_error"),
    ],
)
def test_worker_error_events_map_to_api_errors(code: str, status: int, kind: str) -> None:
    error = from_event(ErrorEvent(seq=1, code=code, message="why", param="messages"))
    assert (error.status, error.type, error.code, error.param, error.message) == (
        status,
        kind,
        code,
        "messages",
        "why",
    )
    assert_valid(error.body(), "ErrorResponse")


def test_error_classes_render_valid_bodies() -> None:
    for error in (ModelNotFound("x"), ServiceUnavailable("busy", code="timeout"), InternalError("bad")):
        assert_valid(error.body(), "ErrorResponse")
    assert ServiceUnavailable("busy", code="timeout").body()["error"]["code"] == "timeout"


# --- render: Envelope.wrap against the spec -------------------------------------------------

CHAT = Envelope(id="chatcmpl-1", model="tiny", fmt=Format.CHAT, created=1_700_000_000)
TEXT = Envelope(id="cmpl-1", model="tiny", fmt=Format.TEXT, created=1_700_000_000)
USAGE = Usage(prompt_tokens=5, completion_tokens=3)
C0 = ChoiceState(index=0)
LOGPROBS = (
    TokenLogprob(token="Hel", logprob=-0.5, bytes=tuple(b"Hel"), top=(TopLogprob(token="Hel", logprob=-0.5, bytes=tuple(b"Hel")),
                                                                       TopLogprob(token="He", logprob=-1.5, bytes=tuple(b"He")))),
    TokenLogprob(token="lo", logprob=-0.25, bytes=tuple(b"lo")),
)


def _whole(env: Envelope, text: str, finish: str, logprobs: bool = False):
    state = ChoiceState(index=0, parts=[text], finish_reason=finish, logprobs=logprobs, entries=list(LOGPROBS))
    return env.whole(state)


def _sent(body) -> dict[str, Any]:
    """A typed body as it goes on the wire."""
    return json.loads(body.to_json())

BODIES: dict[str, tuple[dict[str, Any], str]] = {
    "chat-role-chunk": (
        _sent(CHAT.wrap([CHAT.delta(C0, "", role=True)], chunk=True)),
        "CreateChatCompletionStreamResponse",
    ),
    "chat-text-chunk": (_sent(CHAT.wrap([CHAT.delta(C0, "Hel")], chunk=True)), "CreateChatCompletionStreamResponse"),
    "chat-final-chunk": (
        _sent(CHAT.wrap([CHAT.delta(C0, None, "stop")], chunk=True)),
        "CreateChatCompletionStreamResponse",
    ),
    "chat-usage-chunk": (_sent(CHAT.wrap([], chunk=True, usage=USAGE)), "CreateChatCompletionStreamResponse"),
    "chat-whole": (
        _sent(CHAT.wrap([_whole(CHAT, "Hello", "length")], chunk=False, usage=USAGE)),
        "CreateChatCompletionResponse",
    ),
    "text-final-chunk": (_sent(TEXT.wrap([TEXT.delta(C0, None, "stop")], chunk=True)), "CreateCompletionResponse"),
    "text-whole": (
        _sent(TEXT.wrap([_whole(TEXT, "Hello", "stop")], chunk=False, usage=USAGE)),
        "CreateCompletionResponse",
    ),
    "chat-logprobs-chunk": (
        _sent(CHAT.wrap([CHAT.delta(ChoiceState(index=1, logprobs=True), "Hel", entries=LOGPROBS[:1])], chunk=True)),
        "CreateChatCompletionStreamResponse",
    ),
    "chat-logprobs-whole": (
        _sent(CHAT.wrap([_whole(CHAT, "Hello", "stop", logprobs=True)], chunk=False, usage=USAGE)),
        "CreateChatCompletionResponse",
    ),
    "text-logprobs-whole": (
        _sent(TEXT.wrap([_whole(TEXT, "Hello", "stop", logprobs=True)], chunk=False, usage=USAGE)),
        "CreateCompletionResponse",
    ),
}


@pytest.mark.parametrize("name", list(BODIES))
def test_rendered_body_matches_the_spec(name: str) -> None:
    body, schema = BODIES[name]
    assert_valid(body, schema)


def test_text_chunk_mid_stream_breaks_the_spec_only_by_its_null_finish_reason() -> None:
    """CreateCompletionResponse (also the stream shape) has a non-nullable finish_reason, which no
    mid-stream chunk can honestly fill; OpenAI itself sends null there.  Nothing else may be wrong."""
    chunk = _sent(TEXT.wrap([TEXT.delta(C0, "Hel")], chunk=True))
    errors = errors_for(chunk, "CreateCompletionResponse")
    assert errors and all(e.startswith("at choices/0/finish_reason: None") for e in errors), errors


def test_chat_chunks_say_chunk_and_whole_bodies_do_not() -> None:
    assert BODIES["chat-text-chunk"][0]["object"] == "chat.completion.chunk"
    assert BODIES["chat-whole"][0]["object"] == "chat.completion"
    assert BODIES["text-final-chunk"][0]["object"] == BODIES["text-whole"][0]["object"] == "text_completion"


def test_role_chunk_and_text_chunks_carry_the_right_delta() -> None:
    assert BODIES["chat-role-chunk"][0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert BODIES["chat-text-chunk"][0]["choices"][0]["delta"] == {"content": "Hel"}
    assert BODIES["chat-final-chunk"][0]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                                           "finish_reason": "stop"}  # fmt: skip


def test_logprobs_render_in_each_format() -> None:
    chat = BODIES["chat-logprobs-whole"][0]["choices"][0]["logprobs"]
    assert [e["token"] for e in chat["content"]] == ["Hel", "lo"] and chat["refusal"] is None
    assert chat["content"][0]["top_logprobs"][1] == {"token": "He", "logprob": -1.5, "bytes": list(b"He")}
    assert chat["content"][1]["bytes"] == list(b"lo")
    chunk = BODIES["chat-logprobs-chunk"][0]["choices"][0]
    assert chunk["index"] == 1 and len(chunk["logprobs"]["content"]) == 1
    text = BODIES["text-logprobs-whole"][0]["choices"][0]["logprobs"]
    assert text == {"tokens": ["Hel", "lo"], "token_logprobs": [-0.5, -0.25],
                    "top_logprobs": [{"Hel": -0.5, "He": -1.5}, {}], "text_offset": [0, 3]}  # fmt: skip


def test_usage_is_reported_with_its_total() -> None:
    assert BODIES["chat-usage-chunk"][0]["choices"] == []
    for name in ("chat-usage-chunk", "chat-whole", "text-whole"):
        assert BODIES[name][0]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert "usage" not in BODIES["chat-text-chunk"][0]


def test_whole_bodies_carry_the_text_and_finish_reason() -> None:
    chat_choice = BODIES["chat-whole"][0]["choices"][0]
    assert chat_choice["message"]["content"] == "Hello" and chat_choice["finish_reason"] == "length"
    text_choice = BODIES["text-whole"][0]["choices"][0]
    assert text_choice["text"] == "Hello" and text_choice["finish_reason"] == "stop"


def test_spec_validation_rejects_a_broken_body() -> None:
    """Guards the schema checks above: the validator does reject what the spec forbids."""
    body = BODIES["chat-whole"][0]
    assert errors_for({**body, "object": "chat.completion.chunk"}, "CreateChatCompletionResponse")
    assert errors_for(
        {**body, "choices": [{**body["choices"][0], "finish_reason": "bogus"}]},
        "CreateChatCompletionResponse",
    )
    assert errors_for(
        {"error": {"message": "x", "type": "t"}}, "ErrorResponse"
    )  # param and code are required


@pytest.mark.parametrize("env", [CHAT, TEXT, Envelope(id="cmpl-2", model="queuechat-text-marker", fmt=Format.CHAT)])
@given(text=st.text(min_size=1), index=st.integers(0, 3))
@settings(max_examples=200, deadline=None)
def test_fast_text_chunks_are_the_typed_chunks_byte_for_byte(env: Envelope, text: str, index: int) -> None:
    """TextChunks splices text into a chunk rendered once; it must write exactly what the typed
    chunk writes (escapes, non-ASCII, control characters, a model named like its marker)."""
    choice = ChoiceState(index=index)
    typed = env.wrap([env.delta(choice, text)], chunk=True).to_json()
    assert TextChunks(env).render(choice, text) == typed
