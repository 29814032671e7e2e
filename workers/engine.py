"""One Engine per loaded model: prompt -> checked token ids -> text deltas with stops and usage.

Chat and completions share this path; only the prompt building differs.  No Celery here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from adapters import ContextLengthExceeded, EmptyPrompt, ModelAdapter
from adapters.stops import StopMatcher
from workers.protocol import GenerateJob, SamplingParams, Usage


@dataclass(frozen=True, slots=True)
class Finished:
    finish_reason: Literal["stop", "length"]
    usage: Usage


class Cancelled(Exception):
    """The client went away; generation stopped early."""


class Engine:
    def __init__(self, adapter: ModelAdapter) -> None:
        self.adapter = adapter
        # Defaults for a request's unset temperature / top_p: the models file, then the model.
        self._defaults = {**adapter.default_sampling(), **adapter.spec.defaults.model_dump(exclude_none=True)}

    def prompt_ids(self, job: GenerateJob) -> list[int]:
        """Tokenize the job's prompt; raise ContextLengthExceeded when no token would fit after it,
        EmptyPrompt when there is nothing to generate from."""
        if job.messages is not None:
            ids = self.adapter.chat_prompt(job.messages)
        else:
            ids = self.adapter.text_prompt(job.prompt or "")
        if not ids:
            raise EmptyPrompt()
        if len(ids) >= self.adapter.context_length:
            raise ContextLengthExceeded(len(ids), self.adapter.context_length)
        return ids

    def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[str | Finished]:
        """Yield text deltas, then one `Finished`.  Raises `Cancelled` if `cancelled()` turns true."""
        params = params.resolved(**self._defaults)
        room = self.adapter.context_length - len(prompt_ids)
        limit = min(params.max_tokens or room, room)
        stops = StopMatcher(params.stop)
        produced = 0
        finish: Literal["stop", "length"] = "length"
        steps = self.adapter.stream(prompt_ids, params, limit)
        try:
            for step in steps:
                produced += step.tokens
                text = stops.push(step.text)
                if text:
                    yield text
                if stops.stopped or step.finish:
                    finish = "stop"
                    break
                if cancelled():
                    raise Cancelled()
        finally:
            steps.close()
        tail = stops.flush()
        if tail:
            yield tail
        yield Finished(finish, Usage(prompt_tokens=len(prompt_ids), completion_tokens=produced))
