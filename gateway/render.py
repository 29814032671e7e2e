"""Worker events -> OpenAI responses: SSE chunks or one JSON body.  One loop, two formats.

A response has one or more choices (`n`, or several completion prompts); each choice is one job
with its own event stream.  Choices stream interleaved, each chunk naming its `index`.  The
functions here read `(index, event)` pairs and a `Reply`; they own nothing (the caller opens
and closes the event streams).
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, field

from gateway.errors import APIError, InternalError, from_event
from gateway.openai_responses import (
    ChatChoiceLogprobs,
    ChatCompletionChoice,
    ChatCompletionChunkChoice,
    ChatCompletionMessageToolCall,
    ChatCompletionMessageToolCallChunk,
    ChatCompletionResponseMessage,
    ChatCompletionStreamResponseDelta,
    ChatCompletionTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionUsage,
    CreateChatCompletionResponse,
    CreateChatCompletionStreamResponse,
    CreateCompletionResponse,
    CreateEmbeddingResponse,
    Embedding,
    EmbeddingUsage,
    PromptLogprobs,
    TopLogprob,
)
from gateway.prompt_logprobs import Row, best_of, prompt_rows, token_rows, vllm_prompt_logprobs
from gateway.reply import Format, Reply
from gateway.tool_calls import ToolStreamFilter, parse_tool_calls
from protocol import DoneEvent, EmbeddingsEvent, ErrorEvent, Event, PromptEvent, TokenEvent, TokenLogprob, Usage

Body = CreateChatCompletionResponse | CreateChatCompletionStreamResponse | CreateCompletionResponse
Choice = ChatCompletionChoice | ChatCompletionChunkChoice | CompletionChoice


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
    prompt_rows: list[Row] = field(default_factory=list)  # echo with logprobs: the prompt's, leading the logprobs
    prompt_logprobs: PromptLogprobs | None = None  # vLLM's prompt_logprobs, when asked for
    cumulative_logprob: float | None = None  # best_of's candidates: what ranks them

    def take_prompt(self, event: PromptEvent, reply: Reply) -> None:
        """The worker's echo of the prompt (its text, its tokens' logprobs)."""
        if event.text is not None:
            self.prefix = event.text
        if event.tokens is not None and reply.echo_top is not None:
            self.prompt_rows = prompt_rows(event.tokens, reply.echo_top)
        if event.tokens is not None and reply.prompt_logprobs is not None:
            self.prompt_logprobs = vllm_prompt_logprobs(event.tokens, reply.prompt_logprobs)


def choice_states(reply: Reply, count: int, seed: str = "") -> list[ChoiceState]:
    """`seed` (the response id) makes tool call ids a function of the response: rendered again
    from the same events, a stream is the same."""
    prefixes = list(reply.prefixes) or [""] * count
    return [ChoiceState(index=i, prefix=prefixes[i], logprobs=reply.logprobs,
                        tools=ToolStreamFilter(reply.tool_names, seed=f"{seed}:{i}") if reply.tool_names else None)
            for i in range(count)]  # fmt: skip


@dataclass(frozen=True)
class Envelope:
    """What every chunk and body of one response shares."""

    id: str
    model: str
    fmt: Format
    created: int = field(default_factory=lambda: int(time.time()))

    def wrap(self, choices: list, *, chunk: bool, usage: Usage | None = None,
             prompt_logprobs: PromptLogprobs | None = None) -> Body:  # fmt: skip
        fields = {"id": self.id, "created": self.created, "model": self.model, "choices": choices}
        if usage is not None:
            fields["usage"] = usage_body(usage)
        if prompt_logprobs is not None and self.fmt is Format.CHAT and not chunk:
            fields["prompt_logprobs"] = prompt_logprobs  # vLLM puts a chat's on the response
        if self.fmt is Format.TEXT:
            return CreateCompletionResponse(object="text_completion", **fields)
        if chunk:
            return CreateChatCompletionStreamResponse(object="chat.completion.chunk", **fields)
        return CreateChatCompletionResponse(object="chat.completion", **fields)

    def logprobs(self, choice: ChoiceState, entries: Sequence[TokenLogprob],
                 lead: Sequence[Row] = ()) -> ChatChoiceLogprobs | CompletionLogprobs | None:  # fmt: skip
        """The choice's logprobs object over `entries` (completions: after the prompt's `lead`)."""
        if not choice.logprobs:
            return None
        if self.fmt is Format.CHAT:
            return ChatChoiceLogprobs(content=[_chat_logprob(e) for e in entries], refusal=None)
        rows = [*lead, *token_rows(entries)]
        offsets = []
        for token, _, _ in rows:
            offsets.append(choice.offset)
            choice.offset += len(token)
        return CompletionLogprobs(tokens=[r[0] for r in rows], token_logprobs=[r[1] for r in rows],
                                  top_logprobs=[r[2] for r in rows], text_offset=offsets)  # fmt: skip

    def delta(self, choice: ChoiceState, text: str | None, finish_reason: str | None = None, role: bool = False,
              entries: Sequence[TokenLogprob] = (), lead: Sequence[Row] = ()) -> ChatCompletionChunkChoice | CompletionChoice:  # fmt: skip
        """One streamed choice."""
        logprobs = self.logprobs(choice, entries, lead) if entries or lead else None
        if self.fmt is Format.TEXT:
            return CompletionChoice(index=choice.index, text=text or "", logprobs=logprobs, finish_reason=finish_reason)
        delta = ChatCompletionStreamResponseDelta()
        if role:
            delta.role = "assistant"
        if text is not None:
            delta.content = text
        return ChatCompletionChunkChoice(index=choice.index, delta=delta, logprobs=logprobs, finish_reason=finish_reason)

    def whole(self, choice: ChoiceState) -> ChatCompletionChoice | CompletionChoice:
        """One complete choice."""
        text = choice.prefix + "".join(choice.parts)
        logprobs = self.logprobs(choice, choice.entries, choice.prompt_rows)
        if self.fmt is Format.TEXT:
            extra = {} if choice.prompt_logprobs is None else {"prompt_logprobs": choice.prompt_logprobs}
            return CompletionChoice(index=choice.index, text=text, logprobs=logprobs, finish_reason=choice.finish_reason,
                                    **extra)  # fmt: skip
        message = ChatCompletionResponseMessage(role="assistant", content=text, refusal=None)
        finish = choice.finish_reason or "stop"
        if choice.tools is not None:
            content, calls = parse_tool_calls(text, choice.tools.names, choice.tools.seed)
            if calls:
                message.content = content
                message.tool_calls = [ChatCompletionMessageToolCall.model_validate(call) for call in calls]
                finish = "tool_calls"
        return ChatCompletionChoice(index=choice.index, message=message, logprobs=logprobs, finish_reason=finish)

    def tool_call_delta(self, choice: ChoiceState) -> ChatCompletionChunkChoice:
        calls = [ChatCompletionMessageToolCallChunk.model_validate({"index": i, **call})
                 for i, call in enumerate(choice.tools.calls if choice.tools else [])]  # fmt: skip
        delta = ChatCompletionStreamResponseDelta(tool_calls=calls)
        return ChatCompletionChunkChoice(index=choice.index, delta=delta, logprobs=None, finish_reason=None)


class TextChunks:
    """The chunks that only carry new text (the bulk of a stream), written fast: each choice's
    typed chunk is rendered once around a marker, then every text is spliced in as a JSON string.
    Byte for byte what `env.wrap([env.delta(...)]).to_json()` writes (a unit test compares them);
    it keeps the per-token cost of the typed bodies off the relay's hot path."""

    _MARKER = "queuechat-text-marker"

    def __init__(self, env: Envelope) -> None:
        self._env = env
        self._parts: dict[int, tuple[str, str] | None] = {}

    def render(self, choice: ChoiceState, text: str) -> str:
        if choice.index not in self._parts:
            typed = self._env.wrap([self._env.delta(ChoiceState(index=choice.index), self._MARKER)], chunk=True)
            pieces = typed.to_json().split(json.dumps(self._MARKER))
            self._parts[choice.index] = (pieces[0], pieces[1]) if len(pieces) == 2 else None
        parts = self._parts[choice.index]
        if parts is None:  # the marker also appears elsewhere (a model of that name): the slow way
            return self._env.wrap([self._env.delta(choice, text)], chunk=True).to_json()
        return parts[0] + json.dumps(text, ensure_ascii=False) + parts[1]


def _chat_logprob(entry: TokenLogprob) -> ChatCompletionTokenLogprob:
    top = [TopLogprob(token=t.token, logprob=t.logprob, bytes=list(t.bytes)) for t in entry.top]
    return ChatCompletionTokenLogprob(token=entry.token, logprob=entry.logprob, bytes=list(entry.bytes), top_logprobs=top)


def usage_body(usage: Usage) -> CompletionUsage:
    return CompletionUsage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                           total_tokens=usage.total_tokens)  # fmt: skip


def total_usage(choices: Sequence[ChoiceState], n: int) -> Usage:
    """Prompt tokens once per distinct prompt (not per `n` copy), completion tokens of every choice."""
    prompts: dict[int, int] = {}
    completion = 0
    for choice in choices:
        assert choice.usage is not None
        prompts[choice.index // n] = choice.usage.prompt_tokens
        completion += choice.usage.completion_tokens
    return Usage(prompt_tokens=sum(prompts.values()), completion_tokens=completion)


async def sse_stream(events: AsyncIterable[tuple[int, Event]], env: Envelope, reply: Reply,
                     count: int) -> AsyncIterable[str]:  # fmt: skip
    """The `data:` payloads of a streamed response of `count` choices, ending with `[DONE]`."""
    async for _, payload in sse_events(events, env, reply, count):
        yield payload


async def sse_events(events: AsyncIterable[tuple[int, Event]], env: Envelope, reply: Reply,
                     count: int) -> AsyncIterable[tuple[int, str]]:  # fmt: skip
    """`(seq, payload)`: each payload of the stream with the number of the worker event that
    produced it (the start event, 0, for the leading chunks; the last event's for the tail).
    The payloads are a function of the events alone, so a replay of the same events renders the
    same stream: what resuming relies on."""
    states = choice_states(reply, count, env.id)
    texts = TextChunks(env)
    seq = 0
    try:
        for state in states:  # chat: the role first; completions with echo: the prompt first
            if env.fmt is Format.CHAT:
                yield seq, env.wrap([env.delta(state, "", role=True)], chunk=True).to_json()
            elif state.prefix:
                yield seq, env.wrap([env.delta(state, state.prefix)], chunk=True).to_json()
        async for index, event in events:
            state, seq = states[index], event.seq
            if isinstance(event, PromptEvent):  # completions' echo: the prompt first, with its logprobs
                state.take_prompt(event, reply)
                if env.fmt is Format.TEXT and (event.text or state.prompt_rows):
                    yield seq, env.wrap([env.delta(state, event.text or "", lead=state.prompt_rows)], chunk=True).to_json()
            elif isinstance(event, TokenEvent):
                text = state.tools.push(event.text) if state.tools else event.text
                if event.logprobs:
                    yield seq, env.wrap([env.delta(state, text, entries=event.logprobs)], chunk=True).to_json()
                elif text:
                    yield seq, texts.render(state, text)
            elif isinstance(event, DoneEvent):
                state.usage = event.usage
                finish: str = event.finish_reason
                if state.tools is not None:
                    if tail := state.tools.finish():
                        yield seq, env.wrap([env.delta(state, tail)], chunk=True).to_json()
                    if state.tools.calls:
                        yield seq, env.wrap([env.tool_call_delta(state)], chunk=True).to_json()
                        finish = "tool_calls"
                yield seq, env.wrap([env.delta(state, None, finish)], chunk=True).to_json()
            elif isinstance(event, ErrorEvent):
                yield seq, from_event(event).to_json()
                break
        else:
            if reply.include_usage:
                yield seq, env.wrap([], chunk=True, usage=total_usage(states, reply.per_prompt)).to_json()
    except APIError as exc:
        yield seq, exc.to_json()
    yield seq, "[DONE]"


async def collect(events: AsyncIterable[tuple[int, Event]], env: Envelope, reply: Reply, count: int) -> Body:
    """The whole response of `count` choices as one body; raises the APIError a worker reported."""
    states = choice_states(reply, count, env.id)
    async for index, event in events:
        state = states[index]
        if isinstance(event, TokenEvent):
            state.parts.append(event.text)
            state.entries.extend(event.logprobs or ())
        elif isinstance(event, PromptEvent):
            state.take_prompt(event, reply)
        elif isinstance(event, DoneEvent):
            state.finish_reason, state.usage = event.finish_reason, event.usage
            state.cumulative_logprob = event.cumulative_logprob
        elif isinstance(event, ErrorEvent):
            raise from_event(event)
    if any(state.usage is None for state in states):
        raise InternalError("The worker ended the response without finishing it.")
    usage = total_usage(states, reply.per_prompt)  # every candidate's tokens count
    if reply.best_of is not None:
        states = best_of(states, reply.n, reply.best_of)
    return env.wrap([env.whole(s) for s in states], chunk=False, usage=usage, prompt_logprobs=states[0].prompt_logprobs)


async def collect_logged(events: Sequence[Event], env: Envelope, reply: Reply) -> Body:
    """`collect` over the events of one finished job, as its log holds them."""

    async def replay() -> AsyncIterator[tuple[int, Event]]:
        for event in events:
            yield 0, event

    return await collect(replay(), env, reply, 1)


def _floats(vector: str) -> list[float]:
    raw = base64.b64decode(vector)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def embedding_body(event: EmbeddingsEvent, model: str, encoding_format: str | None) -> CreateEmbeddingResponse:
    encode = (lambda v: v) if encoding_format == "base64" else _floats
    data = [Embedding(object="embedding", index=i, embedding=encode(v)) for i, v in enumerate(event.vectors)]
    usage = EmbeddingUsage(prompt_tokens=event.prompt_tokens, total_tokens=event.prompt_tokens)
    return CreateEmbeddingResponse(object="list", data=data, model=model, usage=usage)
