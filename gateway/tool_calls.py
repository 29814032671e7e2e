"""Tool calls in a model's reply: `<tool_call>{"name": ..., "arguments": ...}</tool_call>` blocks
(the format adapters/tools.py asks for, and Hermes/Qwen-style templates use), or a reply that is
one bare JSON object naming a declared function (Llama-3.1 style)."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from protocol import TOOL_CALL_OPEN as OPEN

# A block's body holds no other opening tag: a reply that mentions the tag before a real call
# ("I'll answer with a <tool_call> block. <tool_call>{...}</tool_call>") must not swallow the call
# into a body that starts at the mention.
_BLOCK = re.compile(r"<tool_call>\s*((?:(?!<tool_call>).)*?)\s*(?:</tool_call>|$)", re.DOTALL)


def _call(obj: Any, names: frozenset[str], call_id: str) -> dict[str, Any] | None:
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": obj["name"], "arguments": text}}


def call_id(seed: str, k: int) -> str:
    """The id of the k-th call in a reply: derived from `seed` (a response's id, so rendering the
    same events again gives the same ids) or random without one."""
    if not seed:
        return f"call_{uuid.uuid4().hex[:24]}"
    return f"call_{hashlib.sha256(f'{seed}:{k}'.encode()).hexdigest()[:24]}"


def parse_tool_calls(text: str, names: frozenset[str], seed: str = "") -> tuple[str | None, list[dict[str, Any]]]:
    """(content without the calls, or None when nothing else was said; the tool calls)."""
    calls: list[dict[str, Any]] = []
    if OPEN in text:
        first = len(text)  # where the first well-formed call starts: the content ends there
        for block in _BLOCK.finditer(text):
            try:
                call = _call(json.loads(block.group(1)), names, call_id(seed, len(calls)))
            except ValueError:
                call = None
            if call:
                calls.append(call)
                first = min(first, block.start())
        if calls:
            content = text[:first].strip()
            return content or None, calls
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            call = _call(json.loads(stripped), names, call_id(seed, 0))
        except ValueError:
            call = None
        if call:
            return None, [call]
    return text, []


@dataclass
class ToolStreamFilter:
    """Streams content until a tool call may be starting, then holds the rest for parsing at the
    end, so call syntax never reaches the client as text."""

    names: frozenset[str]
    seed: str = ""  # for the calls' ids (see call_id)
    text: str = ""
    emitted: int = 0
    calls: list[dict[str, Any]] = field(default_factory=list)

    def push(self, delta: str) -> str:
        self.text += delta
        pending = self.text[self.emitted :]
        if not self.text[: self.emitted].strip() and pending.lstrip().startswith("{"):
            return ""  # perhaps one bare JSON call: hold it
        cut = pending.find(OPEN)
        if cut < 0:  # keep back a tail that could be the start of the tag
            cut = next((i for i in range(max(0, len(pending) - len(OPEN) + 1), len(pending))
                        if OPEN.startswith(pending[i:])), len(pending))  # fmt: skip
        self.emitted += cut
        return pending[:cut]

    def finish(self) -> str:
        """The held text that turned out to be content; fills `calls`."""
        held = self.text[self.emitted :]
        content, self.calls = parse_tool_calls(held, self.names, self.seed)
        if self.calls:
            return content or ""
        return held
