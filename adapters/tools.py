"""Tools in the prompt, for any chat model.

A chat template that knows `tools` (its source mentions them) gets them through
`apply_chat_template(tools=...)`; any other template gets a system message describing them in
the widely trained Hermes style, asking for `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
(gateway/tool_calls.py parses the reply).  tool_choice "required" or a named function is
also said in words here; the grammar the gateway adds (gateway/structured.py) is what holds the
reply to a well-formed call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from protocol import TOOL_CALL_CLOSE as CLOSE
from protocol import TOOL_CALL_OPEN as OPEN
from protocol import ChatMessage


def tool_instructions(tools: Sequence[dict[str, Any]], choice: str | None) -> str:
    """The system text that describes `tools` to a model whose template cannot."""
    listed = "\n".join(json.dumps({"type": "function", "function": t}, ensure_ascii=False) for t in tools)
    text = (
        "You can call functions. They are listed in <tools></tools> as JSON signatures:\n"
        f"<tools>\n{listed}\n</tools>\n"
        "To call one, answer with a JSON object inside <tool_call></tool_call> tags, one per call:\n"
        '<tool_call>\n{"name": <function-name>, "arguments": <arguments-object>}\n</tool_call>'
    )
    return text + choice_hint(choice)


def choice_hint(choice: str | None) -> str:
    if choice == "required":
        return "\nYou must call at least one function."
    if choice not in (None, "auto", "none"):
        return f"\nYou must call the function {choice}."
    return ""


def as_text_turns(messages: Sequence[ChatMessage]) -> tuple[ChatMessage, ...]:
    """For templates that know no tools: earlier calls become <tool_call> text in the assistant's
    message, and tool results become user turns in <tool_response> tags."""
    out = []
    for m in messages:
        if m.role == "tool":
            out.append(ChatMessage(role="user", content=f"<tool_response>\n{m.content}\n</tool_response>"))
        elif m.tool_calls:
            calls = "\n".join(f'{OPEN}\n{{"name": {json.dumps(c.name)}, "arguments": {c.arguments}}}\n{CLOSE}'
                              for c in m.tool_calls)  # fmt: skip
            out.append(ChatMessage(role=m.role, content=f"{m.content}\n{calls}".strip()))
        else:
            out.append(m)
    return tuple(out)


def template_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as `apply_chat_template` takes them, tool calls and results included."""
    out: list[dict[str, Any]] = []
    for m in messages:
        entry: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_call_id:
            entry["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            entry["tool_calls"] = [{"id": c.id, "type": "function",
                                    "function": {"name": c.name, "arguments": _loads(c.arguments)}}
                                   for c in m.tool_calls]  # fmt: skip
        out.append(entry)
    return out


def _loads(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments
