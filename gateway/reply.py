"""What one generation request asks for, once validated: the jobs to queue and how to present
their output.  Request models build a `Generation`; `gateway.generation.respond` serves it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from protocol import GenerateJob

if TYPE_CHECKING:
    from gateway.keep import Keep


class Format(Enum):
    CHAT = "chat.completion"
    TEXT = "text_completion"


@dataclass(frozen=True)
class Reply:
    """How to present the jobs' output: one choice per job, in order."""

    fmt: Format
    stream: bool
    include_usage: bool = False
    logprobs: bool = False
    prefixes: Sequence[str] = ()  # completions with echo, as records made before echo came from the worker
    n: int = 1  # choices per prompt (usage counts a prompt once)
    tool_names: frozenset[str] = frozenset()  # tools offered: their calls are parsed out of the text
    best_of: int | None = None  # completions: candidates per prompt, of which the n likeliest are returned
    echo_top: int | None = None  # echo with logprobs: the prompt's tokens lead the logprobs, with this many alternatives
    prompt_logprobs: int | None = None  # vLLM's prompt_logprobs: this many alternatives per prompt position

    @property
    def per_prompt(self) -> int:
        """Jobs per prompt: best_of's candidates, else the n choices."""
        return self.best_of or self.n


@dataclass(frozen=True)
class Generation:
    """A response to produce: its id (also the X-Request-Id), one job per choice, the reply,
    and whether it is kept past its connection."""

    response_id: str
    jobs: tuple[GenerateJob, ...]
    reply: Reply
    keep: Keep | None = None  # outlives its connection (store, detach grace)

    @property
    def model(self) -> str:
        return self.jobs[0].model
