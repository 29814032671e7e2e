"""`POST /v1/responses` bodies: validated, and turned into the one chat job they stand for.

Input items are normalised to the shapes OpenAI lists them in (`input_items`) and kept in the
job record, so a later request naming this one as `previous_response_id` can rebuild the
conversation: every earlier turn's input items and output items, then this turn's.
Built-in tools, reasoning, images, audio and files are refused with a 400 naming the parameter.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from gateway.errors import InvalidRequest
from gateway.openai_types import _Request
from gateway.settings import GatewaySettings
from gateway.structured import forced_call, only_one
from gateway.tool_types import JsonSchemaFormat, ResponseFormat
from protocol import ChatMessage, Constraint, GenerateJob, SamplingParams, ToolCall, with_system_text

LOGPROBS_INCLUDE = "message.output_text.logprobs"
_TEXT_PARTS = {"input_text", "output_text", "text"}


class CreateResponseRequest(_Request):
    model: Annotated[str, Field(min_length=1)]
    input: str | Annotated[list[dict[str, Any]], Field(min_length=1, max_length=2048)]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    text: dict[str, Any] | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=128)] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    store: bool | None = True
    background: bool | None = False
    stream: bool | None = False
    metadata: dict[str, str] | None = None
    include: list[str] | None = None
    truncation: Literal["disabled", "auto"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _reject_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in ("reasoning", "conversation", "prompt", "max_tool_calls"):
                if data.get(name) not in (None, {}, []):
                    raise InvalidRequest(f"'{name}' is not supported by this server.", param=name)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> CreateResponseRequest:
        if self.background and self.store is False:
            raise InvalidRequest("A background response must be stored ('store' may not be false).", param="store")
        for i, tool in enumerate(self.tools or []):
            if tool.get("type") != "function":
                raise InvalidRequest(f"Tools of type '{tool.get('type')}' are not supported by this server; only "
                                     "'function' tools are.", param=f"tools[{i}].type")  # fmt: skip
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise InvalidRequest("A function tool needs a 'name'.", param=f"tools[{i}].name")
        if len(self.tool_names) != len(self.tools or []):
            raise InvalidRequest("Two tools have the same name.", param="tools")
        choice = self.tool_choice
        if isinstance(choice, dict):
            if choice.get("type") != "function" or choice.get("name") not in self.tool_names:
                raise InvalidRequest("'tool_choice' may name one of the function tools offered "
                                     "({\"type\": \"function\", \"name\": ...}).", param="tool_choice")  # fmt: skip
        elif choice not in (None, "auto", "none", "required"):
            raise InvalidRequest("'tool_choice' is 'auto', 'none', 'required' or a function.", param="tool_choice")
        if choice not in (None, "none") and not self.tools:
            raise InvalidRequest("'tool_choice' needs 'tools'.", param="tool_choice")
        for i, item in enumerate(self.include or []):
            if item != LOGPROBS_INCLUDE:
                raise InvalidRequest(f"'include' value '{item}' is not supported; this server can include "
                                     f"'{LOGPROBS_INCLUDE}'.", param=f"include[{i}]")  # fmt: skip
        if self.truncation == "auto":
            raise InvalidRequest("Truncation 'auto' is not supported: an input too long for the model is a 400.",
                                 param="truncation")  # fmt: skip
        self.format_instruction()  # validates text.format
        return self

    @property
    def tool_names(self) -> frozenset[str]:
        return frozenset(t["name"] for t in self.tools or [])

    @property
    def choice_name(self) -> str | None:
        """The job's tool_choice: auto, required, a function's name, or None (tools not offered)."""
        if not self.tools or self.tool_choice == "none":
            return None
        if isinstance(self.tool_choice, dict):
            return str(self.tool_choice["name"])
        return self.tool_choice or "auto"

    @property
    def format(self) -> dict[str, Any]:
        fmt = (self.text or {}).get("format") or {"type": "text"}
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            raise InvalidRequest("'text.format.type' is 'text', 'json_object' or 'json_schema'.", param="text.format")
        if kind == "json_schema" and not isinstance(fmt.get("schema"), dict):
            raise InvalidRequest("A 'json_schema' text format needs its 'schema'.", param="text.format.schema")
        return dict(fmt)

    def response_format(self) -> ResponseFormat:
        """`text.format` as chat's response_format."""
        fmt = self.format
        try:
            schema = JsonSchemaFormat.model_validate({"name": fmt.get("name") or "output", "schema": fmt.get("schema")})
        except ValidationError:
            raise InvalidRequest("'text.format.name' is 1 to 64 letters, digits, '_' or '-'.",
                                 param="text.format.name") from None  # fmt: skip
        return ResponseFormat(type=fmt["type"], json_schema=schema)

    def format_instruction(self) -> str | None:
        """What the model is told for `text.format` (a grammar holds it to it as well)."""
        return self.response_format().instruction()

    def constraint(self) -> Constraint | None:
        """The grammar the output must match: text.format's or a forced tool call's (one at most)."""
        fmt = self.response_format().constraint("text.format")
        functions = [{"name": t["name"], "parameters": t.get("parameters")} for t in self.tools or []]
        forced = forced_call(functions, self.choice_name, self.parallel_tool_calls)
        return only_one(fmt, forced)

    def input_items(self) -> list[dict[str, Any]]:
        """The input as a list of items in OpenAI's resource shapes (each with an id)."""
        raw = [{"type": "message", "role": "user", "content": self.input}] if isinstance(self.input, str) else self.input
        return [_item(item, f"input[{i}]") for i, item in enumerate(raw)]

    def sampling_params(self, max_tokens_limit: int) -> SamplingParams:
        if self.max_output_tokens is not None and self.max_output_tokens > max_tokens_limit:
            raise InvalidRequest(f"'max_output_tokens' may be at most {max_tokens_limit} on this server.",
                                 param="max_output_tokens")  # fmt: skip
        temperature, top_p = self.temperature, self.top_p
        if top_p == 0.0:
            temperature, top_p = 0.0, None
        logprobs = (self.top_logprobs or 0) if LOGPROBS_INCLUDE in (self.include or []) else None
        return SamplingParams(temperature=temperature, top_p=top_p, max_tokens=self.max_output_tokens,
                              logprobs=logprobs)  # fmt: skip

    def job(self, settings: GatewaySettings, response_id: str, history: list[dict[str, Any]]) -> GenerateJob:
        """The chat job: `history` (earlier turns' items), this input, the instructions and format."""
        messages = messages_of([*history, *self.input_items()])
        if len(messages) > settings.max_messages:
            raise InvalidRequest(f"At most {settings.max_messages} messages are accepted.", param="input")
        chars = sum(len(m.content) for m in messages) + len(self.instructions or "")
        if chars > settings.max_prompt_chars:
            raise InvalidRequest(f"The input has {chars} characters; this server accepts at most "
                                 f"{settings.max_prompt_chars}.", param="input", code="prompt_too_long")  # fmt: skip
        if not messages:
            raise InvalidRequest("The input holds no message.", param="input")
        if self.instructions:
            messages = with_system_text(messages, self.instructions)
        if instruction := self.format_instruction():
            messages = with_system_text(messages, instruction)
        fields: dict[str, Any] = {}
        if self.choice_name is not None:
            fields["tools"] = tuple({"name": t["name"], "description": t.get("description") or "",
                                     "parameters": t.get("parameters") or {}} for t in self.tools or [])  # fmt: skip
            fields["tool_choice"] = self.choice_name
        return GenerateJob(request_id=response_id, model=self.model, messages=messages, constraint=self.constraint(),
                           params=self.sampling_params(settings.max_tokens_limit),
                           expires_at=time.time() + settings.queue_timeout, **fields)  # fmt: skip


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def _text_of(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    if not isinstance(content, list):
        raise InvalidRequest("A message's 'content' is a string or a list of text parts.", param=f"{where}.content")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            raise InvalidRequest(f"Content parts of type '{kind}' are not supported by this server (text only).",
                                 param=f"{where}.content[{j}].type")  # fmt: skip
        parts.append({"type": "input_text" if kind == "text" else kind, "text": part["text"]})
    return parts


def _item(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise InvalidRequest("Each input item is an object.", param=where)
    kind = item.get("type", "message" if "role" in item else None)
    item_id = item.get("id") or f"item_{uuid.uuid4().hex}"
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "system", "developer", "assistant"):
            raise InvalidRequest("A message's role is user, system, developer or assistant.", param=f"{where}.role")
        parts = _text_of(item.get("content"), where)
        if role == "assistant":
            parts = [{"type": "output_text", "text": p["text"], "annotations": []} for p in parts]
            item_id = item.get("id") or f"msg_{uuid.uuid4().hex}"
        return {"id": item_id, "type": "message", "role": role, "content": parts, "status": "completed"}
    if kind == "function_call":
        if not all(isinstance(item.get(k), str) for k in ("call_id", "name", "arguments")):
            raise InvalidRequest("A function_call item needs 'call_id', 'name' and 'arguments' (strings).", param=where)
        return {"id": item.get("id") or f"fc_{uuid.uuid4().hex}", "type": "function_call", "call_id": item["call_id"],
                "name": item["name"], "arguments": item["arguments"], "status": "completed"}  # fmt: skip
    if kind == "function_call_output":
        output = item.get("output")
        if isinstance(output, list):
            output = "".join(p["text"] for p in _text_of(output, f"{where}.output"))
        if not isinstance(item.get("call_id"), str) or not isinstance(output, str):
            raise InvalidRequest("A function_call_output item needs 'call_id' and 'output'.", param=where)
        return {"id": item.get("id") or f"fco_{uuid.uuid4().hex}", "type": "function_call_output",
                "call_id": item["call_id"], "output": output, "status": "completed"}  # fmt: skip
    raise InvalidRequest(f"Input items of type '{kind}' are not supported by this server.", param=f"{where}.type")


def messages_of(items: list[dict[str, Any]]) -> tuple[ChatMessage, ...]:
    """Items (input and earlier output) as the chat messages a model is prompted with: function
    calls join the assistant message before them, their outputs become tool messages."""
    messages: list[ChatMessage] = []
    for item in items:
        if item["type"] == "message":
            text = "".join(part.get("text", "") for part in item["content"])
            messages.append(ChatMessage(role=item["role"], content=text))
        elif item["type"] == "function_call":
            call = ToolCall(id=item["call_id"], name=item["name"], arguments=item["arguments"])
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                messages[-1] = last.model_copy(update={"tool_calls": (*(last.tool_calls or ()), call)})
            else:
                messages.append(ChatMessage(role="assistant", content="", tool_calls=(call,)))
        elif item["type"] == "function_call_output":
            messages.append(ChatMessage(role="tool", content=item["output"], tool_call_id=item["call_id"]))
    return tuple(messages)
