"""Worker events -> OpenAI responses: SSE chunks or one JSON body.  One loop, two formats.

A response has one or more choices (`n`, or several completion prompts); each choice is one job
with its own event stream.  Choices stream interleaved, each chunk naming its `index`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from gateway.errors import APIError, InternalError, from_event
from gateway.fanout import Choices
from gateway.tool_calls import ToolStreamFilter, parse_tool_calls
from protocol import DoneEvent, ErrorEvent, TokenEvent, TokenLogprob, Usage


class Format(Enum):
    CHAT = "chat.completion"
    TEXT = "text_completion"


@dataclass
class ChoiceState:
    """What one choice has produced so far."""

    index: int
    prefix: str = ""  # completions with echo: the prompt, sent before the first generated text
    logprobs: bool = False
    parts: list[str] = field(default_factory=list)
    entries: list[TokenLogprob] = field(default_factory=list)
    offset: int = 0  # characters so far, for the completions' text_offset
    finish_reason: str | None = None
    usage: Usage | None = None
    tools: ToolStreamFilter | None = None  # chat with tools offered: calls are parsed out of the text


@dataclass(frozen=True)
class Envelope:
    """What every chunk and body of one response shares."""

    id: str
    model: str
    fmt: Format
    created: int = field(default_factory=lambda: int(time.time()))

    def _object(self, chunk: bool) -> str:
        return "chat.completion.chunk" if chunk and self.fmt is Format.CHAT else self.fmt.value

    def wrap(self, choices: list[dict[str, Any]], *, chunk: bool, usage: Usage | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": self._object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage_dict(usage)
        return body

    def logprobs(self, choice: ChoiceState, entries: Sequence[TokenLogprob]) -> dict[str, Any] | None:
        if not choice.logprobs:
            return None
        if self.fmt is Format.CHAT:
            return {"content": [_chat_logprob(e) for e in entries], "refusal": None}
        offsets = []
        for entry in entries:
            offsets.append(choice.offset)
            choice.offset += len(entry.token)
        return {
            "tokens": [e.token for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries],
            "text_offset": offsets,
        }

    def delta(self, choice: ChoiceState, text: str | None, finish_reason: str | None = None, role: bool = False,
              entries: Sequence[TokenLogprob] = ()) -> dict[str, Any]:  # fmt: skip
        """One streamed choice."""
        logprobs = self.logprobs(choice, entries) if entries else None
        if self.fmt is Format.TEXT:
            return {"index": choice.index, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        return {"index": choice.index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}

    def whole(self, choice: ChoiceState) -> dict[str, Any]:
        """One complete choice."""
        text = choice.prefix + "".join(choice.parts)
        logprobs = self.logprobs(choice, choice.entries)
        if self.fmt is Format.TEXT:
            return {"index": choice.index, "text": text, "logprobs": logprobs, "finish_reason": choice.finish_reason}
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        finish = choice.finish_reason
        if choice.tools is not None:
            content, calls = parse_tool_calls(text, choice.tools.names)
            if calls:
                message.update(content=content, tool_calls=calls)
                finish = "tool_calls"
        return {"index": choice.index, "message": message, "logprobs": logprobs, "finish_reason": finish}

    def tool_call_delta(self, choice: ChoiceState) -> dict[str, Any]:
        calls = [{"index": i, **call} for i, call in enumerate(choice.tools.calls if choice.tools else [])]
        return {"index": choice.index, "delta": {"tool_calls": calls}, "logprobs": None, "finish_reason": None}


def _chat_logprob(entry: TokenLogprob) -> dict[str, Any]:
    top = [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in entry.top]
    return {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.bytes), "top_logprobs": top}


def usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def total_usage(choices: Sequence[ChoiceState], prompt_of: Sequence[int]) -> Usage:
    """Prompt tokens once per distinct prompt (not per `n` copy), completion tokens of every choice."""
    prompts: dict[int, int] = {}
    completion = 0
    for choice in choices:
        assert choice.usage is not None
        prompts[prompt_of[choice.index]] = choice.usage.prompt_tokens
        completion += choice.usage.completion_tokens
    return Usage(prompt_tokens=sum(prompts.values()), completion_tokens=completion)


def _dump(body: dict[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


async def sse_stream(choices: Choices, env: Envelope, states: list[ChoiceState], include_usage: bool,
                     prompt_of: Sequence[int]) -> AsyncIterator[str]:  # fmt: skip
    """The `data:` payloads of a streamed response, ending with `[DONE]`; closes `choices`."""
    try:
        async with choices:
            for state in states:  # chat: the role first; completions with echo: the prompt first
                if env.fmt is Format.CHAT:
                    yield _dump(env.wrap([env.delta(state, "", role=True)], chunk=True))
                elif state.prefix:
                    yield _dump(env.wrap([env.delta(state, state.prefix)], chunk=True))
            async for index, event in choices:
                state = states[index]
                if isinstance(event, TokenEvent):
                    text = state.tools.push(event.text) if state.tools else event.text
                    if text or event.logprobs:
                        yield _dump(env.wrap([env.delta(state, text, entries=event.logprobs or ())], chunk=True))
                elif isinstance(event, DoneEvent):
                    state.usage = event.usage
                    finish: str = event.finish_reason
                    if state.tools is not None:
                        if tail := state.tools.finish():
                            yield _dump(env.wrap([env.delta(state, tail)], chunk=True))
                        if state.tools.calls:
                            yield _dump(env.wrap([env.tool_call_delta(state)], chunk=True))
                            finish = "tool_calls"
                    yield _dump(env.wrap([env.delta(state, None, finish)], chunk=True))
                elif isinstance(event, ErrorEvent):
                    yield _dump(from_event(event).body())
                    break
            else:
                if include_usage:
                    yield _dump(env.wrap([], chunk=True, usage=total_usage(states, prompt_of)))
    except APIError as exc:
        yield _dump(exc.body())
    yield "[DONE]"


async def collect(choices: Choices, env: Envelope, states: list[ChoiceState], prompt_of: Sequence[int]) -> dict[str, Any]:
    """The whole response as one body; raises the APIError a worker reported."""
    async with choices:
        async for index, event in choices:
            state = states[index]
            if isinstance(event, TokenEvent):
                state.parts.append(event.text)
                state.entries.extend(event.logprobs or ())
            elif isinstance(event, DoneEvent):
                state.finish_reason, state.usage = event.finish_reason, event.usage
            elif isinstance(event, ErrorEvent):
                raise from_event(event)
    if any(state.usage is None for state in states):
        raise InternalError("The worker ended the response without finishing it.")
    return env.wrap([env.whole(s) for s in states], chunk=False, usage=total_usage(states, prompt_of))
