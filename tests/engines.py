"""Test helpers around the workers' engines: a synchronous way to run one request."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from protocol import ErrorCode, SamplingParams, TokenLogprob, Usage
from workers.batch_engine import BatchEngine
from workers.contract import Cancelled, Finished, FinishReason


@dataclass(frozen=True)
class PromptEcho:
    """What the engine sent about the prompt (echo, prompt logprobs)."""

    text: str | None
    tokens: tuple | None


class QueueSink:
    """A Sink that queues what the engine sends: text, then a Finished or an exception."""

    def __init__(self) -> None:
        self.items: queue.Queue[str | Finished | Exception] = queue.Queue()

    def token(self, text: str, logprobs: tuple[TokenLogprob, ...] | None = None) -> None:
        self.items.put(text)

    def prompt(self, text: str | None, tokens: tuple | None) -> None:
        self.items.put(PromptEcho(text, tokens))

    def done(self, finish_reason: FinishReason, usage: Usage, cumulative_logprob: float | None = None) -> None:
        self.cumulative_logprob = cumulative_logprob
        self.items.put(Finished(finish_reason, usage))

    def error(self, code: ErrorCode, message: str, param: str | None = None) -> None:
        self.items.put(Cancelled() if code == "cancelled" else RuntimeError(f"{code}: {message}"))

    def keepalive(self) -> None:
        pass


def generate(engine: BatchEngine, prompt_ids: list[int], params: SamplingParams,
             cancelled: Callable[[], bool] = lambda: False) -> Iterator[str | Finished]:  # fmt: skip
    """Text deltas, then one `Finished`; raises `Cancelled` once `cancelled()` turns true."""
    sink = QueueSink()
    seq = engine.submit(prompt_ids, params, sink)
    while True:
        try:
            item = sink.items.get(timeout=0.05)
        except queue.Empty:
            if cancelled():
                engine.cancel(seq)
            continue
        if isinstance(item, Exception):
            raise item
        yield item
        if isinstance(item, Finished):
            return
        if cancelled():
            engine.cancel(seq)
