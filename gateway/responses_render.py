"""Worker events -> the Responses API: the `Response` object at any moment, and the typed stream
events (`response.created` … `response.completed`, numbered by `sequence_number`).

`ResponseState` reads a job's events in order; what it emits depends on those events and the job
record alone (ids included), so the stream rendered again from the log is the same stream: a
client resumes with `starting_after` and gets exactly the events it missed.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from gateway.errors import APIError
from gateway.jobs import JobRecord
from gateway.tool_calls import ToolStreamFilter
from protocol import DoneEvent, ErrorEvent, Event, StartEvent, TokenEvent, TokenLogprob

StreamEvent = dict[str, Any]

_PROMPT_ERRORS = {"context_length_exceeded", "invalid_request", "model_not_found"}


def _logprob(entry: TokenLogprob) -> dict[str, Any]:
    return {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.bytes),
            "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in entry.top]}  # fmt: skip


class ResponseState:
    """One response as its events have made it so far."""

    def __init__(self, record: JobRecord) -> None:
        self.record = record
        self.request = record.request
        names = frozenset(t["name"] for t in self.request.get("tools") or []) if self.request.get("tool_choice") != "none" else frozenset()
        self.tools = ToolStreamFilter(names, seed=record.id) if names else None
        self.text = ""
        self.logprobs: list[dict[str, Any]] = []
        self.started = False
        self.message_open = False  # the assistant message item has been announced
        self.done: DoneEvent | None = None
        self.error: ErrorEvent | APIError | None = None
        self.calls: list[dict[str, Any]] = []
        self.completed_at: int | None = None

    @property
    def message_id(self) -> str:
        return f"msg_{self.record.id.removeprefix('resp_')}"

    @property
    def finished(self) -> bool:
        return self.done is not None or self.error is not None

    def status(self) -> str:
        if self.error is not None:
            return "cancelled" if getattr(self.error, "code", None) == "cancelled" else "failed"
        if self.done is not None:
            return "incomplete" if self.done.finish_reason == "length" else "completed"
        return "in_progress" if self.started else "queued"

    # -- the Response object -------------------------------------------------------------------

    def message_item(self) -> dict[str, Any]:
        status = "in_progress" if not self.finished else ("incomplete" if self.status() == "incomplete" else "completed")
        return {"id": self.message_id, "type": "message", "role": "assistant", "status": status,
                "content": [self.text_part()] if self.message_open or self.text else []}  # fmt: skip

    def text_part(self) -> dict[str, Any]:
        return {"type": "output_text", "text": self.text, "annotations": [], "logprobs": list(self.logprobs)}

    def call_item(self, k: int, done: bool = True) -> dict[str, Any]:
        call = self.calls[k]
        return {"id": f"fc_{call['id'].removeprefix('call_')}", "type": "function_call", "call_id": call["id"],
                "name": call["function"]["name"], "arguments": call["function"]["arguments"] if done else "",
                "status": "completed" if done else "in_progress"}  # fmt: skip

    def output(self) -> list[dict[str, Any]]:
        items = [self.message_item()] if self.message_open or (self.text and not self.calls) else []
        return items + [self.call_item(k) for k in range(len(self.calls))]

    def response(self) -> dict[str, Any]:
        req, record = self.request, self.record
        status = self.status()
        error = None
        if status == "failed":
            code = getattr(self.error, "code", None)
            error = {"code": "invalid_prompt" if code in _PROMPT_ERRORS else "server_error",
                     "message": getattr(self.error, "message", "The response failed.")}  # fmt: skip
        usage = None
        if self.done is not None:
            u = self.done.usage
            usage = {"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                     "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                     "total_tokens": u.total_tokens}  # fmt: skip
        tool_choice = req.get("tool_choice_body", "auto")
        body = {
            "id": record.id, "object": "response", "created_at": record.created, "status": status,
            "completed_at": self.completed_at, "background": record.background, "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": req.get("instructions"), "max_output_tokens": req.get("max_output_tokens"),
            "model": record.model, "output": self.output(), "parallel_tool_calls": req.get("parallel_tool_calls", True),
            "previous_response_id": req.get("previous_response_id"), "metadata": record.metadata,
            "store": record.stored, "temperature": req.get("temperature"), "top_p": req.get("top_p"),
            "top_logprobs": req.get("top_logprobs"), "text": {"format": req.get("format") or {"type": "text"}},
            "tool_choice": tool_choice, "tools": req.get("tools") or [], "truncation": "disabled",
        }  # fmt: skip
        if usage is not None:  # not nullable: absent until the end
            body["usage"] = usage
        return body

    # -- the stream ----------------------------------------------------------------------------

    def opening(self) -> list[StreamEvent]:
        return [{"type": "response.created", "response": self.response()}]

    def apply(self, event: Event | APIError) -> list[StreamEvent]:
        """Take the next event into account; the stream events it produces."""
        if isinstance(event, (APIError, ErrorEvent)):
            return self._failed(event)
        if isinstance(event, StartEvent):
            self.started = True
            out = [{"type": "response.in_progress", "response": self.response()}]
            return out + (self._open_message() if self.tools is None else [])
        if isinstance(event, TokenEvent):
            text = self.tools.push(event.text) if self.tools else event.text
            entries = [_logprob(e) for e in event.logprobs or ()]
            self.logprobs.extend(entries)
            return self._delta(text, entries) if text or entries else []
        if isinstance(event, DoneEvent):
            return self._finish(event)
        return []  # keep-alives

    def _open_message(self) -> list[StreamEvent]:
        if self.message_open:
            return []
        self.message_open = True
        return [{"type": "response.output_item.added", "output_index": 0, "item": self.message_item()},
                {"type": "response.content_part.added", "item_id": self.message_id, "output_index": 0,
                 "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}]  # fmt: skip

    def _delta(self, text: str, entries: list[dict[str, Any]]) -> list[StreamEvent]:
        out = self._open_message()
        self.text += text
        out.append({"type": "response.output_text.delta", "item_id": self.message_id, "output_index": 0,
                    "content_index": 0, "delta": text, "logprobs": entries})  # fmt: skip
        return out

    def _finish(self, event: DoneEvent) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if self.tools is not None:
            if tail := self.tools.finish():
                out += self._delta(tail, [])
            self.calls = self.tools.calls
        self.done, self.completed_at = event, int(time.time())
        if self.message_open:
            part = self.text_part()
            out += [{"type": "response.output_text.done", "item_id": self.message_id, "output_index": 0,
                     "content_index": 0, "text": self.text, "logprobs": part["logprobs"]},
                    {"type": "response.content_part.done", "item_id": self.message_id, "output_index": 0,
                     "content_index": 0, "part": part},
                    {"type": "response.output_item.done", "output_index": 0, "item": self.message_item()}]  # fmt: skip
        first = 1 if self.message_open else 0
        for k in range(len(self.calls)):
            item, index = self.call_item(k), first + k
            out += [{"type": "response.output_item.added", "output_index": index, "item": self.call_item(k, done=False)},
                    {"type": "response.function_call_arguments.delta", "item_id": item["id"], "output_index": index,
                     "delta": item["arguments"]},
                    {"type": "response.function_call_arguments.done", "item_id": item["id"], "output_index": index,
                     "name": item["name"], "arguments": item["arguments"]},
                    {"type": "response.output_item.done", "output_index": index, "item": item}]  # fmt: skip
        kind = "response.incomplete" if self.status() == "incomplete" else "response.completed"
        return [*out, {"type": kind, "response": self.response()}]

    def _failed(self, error: ErrorEvent | APIError) -> list[StreamEvent]:
        self.error, self.completed_at = error, int(time.time())
        return [{"type": "response.failed", "response": self.response()}]


def replayed(record: JobRecord, events: list[Event]) -> ResponseState:
    """The state after `events` (a finished or unfinished job's log)."""
    state = ResponseState(record)
    for event in events:
        state.apply(event)
    return state


async def stream_events(state: ResponseState, events: AsyncIterable[Event], after: int = -1) -> AsyncIterator[bytes]:
    """The SSE bytes of the response's stream events numbered above `after`, then the end.  An
    error raised while reading (a lost worker, a timeout) ends the response as failed."""
    number = -1

    def emit(batch: list[StreamEvent]) -> list[bytes]:
        nonlocal number
        out = []
        for item in batch:
            number += 1
            if number > after:
                data = json.dumps({**item, "sequence_number": number}, ensure_ascii=False, separators=(",", ":"))
                out.append(f"id: {state.record.id}:{number}\nevent: {item['type']}\ndata: {data}\n\n".encode())
        return out

    for chunk in emit(state.opening()):
        yield chunk
    try:
        async for event in events:
            for chunk in emit(state.apply(event)):
                yield chunk
            if state.finished:
                return
    except APIError as exc:
        for chunk in emit(state.apply(exc)):
            yield chunk
