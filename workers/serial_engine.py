"""An engine for adapters that produce text themselves (kind "text", e.g. remote-code ChatGLM's
`stream_chat`): one request at a time, in order, with the same interface as `Engine`, so tasks,
heartbeats and cancellation work the same way.  Stops and the token limit are applied here."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from adapters import ContextLengthExceeded, EmptyPrompt, TextAdapter, UnsupportedParameter
from adapters.stops import StopMatcher
from protocol import GENERATES, Feature, GenerateJob, ModelSpec, SamplingParams, Usage
from workers.contract import EngineBase, FinishReason, Sink
from workers.logprobs import prompt_logprobs_param

log = logging.getLogger(__name__)


@dataclass(eq=False)
class TextRequest:
    job: GenerateJob
    prompt_ids: list[int]
    params: SamplingParams
    limit: int
    sink: Sink
    stops: StopMatcher
    cancelled: bool = False
    finished: threading.Event = field(default_factory=threading.Event)


class SerialEngine(EngineBase):
    """The engine of text adapters: one request at a time, in order."""

    capabilities = GENERATES
    slots = 1
    # The model streams text: nothing that needs its logits or token ids (its adapter's `check`
    # refuses the same, for a card the gateway had not read yet).
    unsupported: tuple[Feature, ...] = ("logprobs", "prompt_logprobs", "best_of", "token_prompt", "constraint",
                                        "logit_bias", "penalties")  # fmt: skip

    def __init__(self, adapter: TextAdapter, slots: int | None = 1, on_step_end: Callable[[], None] = lambda: None,
                 keepalive: float = 5.0) -> None:  # fmt: skip
        self.adapter = adapter  # `slots` is ignored: the model streams one reply at a time
        self._on_step_end = on_step_end
        self._keepalive = keepalive  # seconds a request may go without an event
        chosen = adapter.spec.defaults.model_dump(exclude_none=True, exclude={"max_tokens"})
        self._defaults = {**adapter.default_sampling(), **chosen}
        self._default_max_tokens = adapter.spec.defaults.max_tokens
        self._queue: queue.Queue[TextRequest | None] = queue.Queue()
        self._busy = False
        self.generated_tokens = 0
        self._thread = threading.Thread(target=self._loop, name=f"engine-{adapter.spec.name}", daemon=True)
        self._thread.start()

    @staticmethod
    def pool_slots(spec: ModelSpec) -> int:
        return 1

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - self._queue.qsize() - int(self._busy))

    def stats(self) -> dict[str, int]:
        return {"running": int(self._busy), "slots": self.slots, "tokens": self.generated_tokens}

    def prompt_ids(self, job: GenerateJob) -> list[int]:
        self._check_logit_free(job)
        self.adapter.check(job)
        ids = self.adapter.prompt_ids(job)
        if not ids:
            raise EmptyPrompt()
        if len(ids) >= self.adapter.context_length:
            raise ContextLengthExceeded(len(ids), self.adapter.context_length)
        self.adapter.conversation(job)  # a conversation the model cannot take fails before it starts
        return ids

    def _check_logit_free(self, job: GenerateJob) -> None:
        """Refuse what needs the model's logits or its token ids, which a text adapter never sees."""
        name, params = self.adapter.spec.name, job.params
        if isinstance(job.prompt, tuple):
            raise UnsupportedParameter("prompt", name, "as token ids is not supported by model")
        if params.prompt_logprobs is not None:
            raise UnsupportedParameter(prompt_logprobs_param(job), name, "(logprobs of the prompt) is not supported by model")
        if params.cumulative_logprob:
            raise UnsupportedParameter("best_of", name, "(ranking candidates by logprob) is not supported by model")

    def submit_job(self, job: GenerateJob, prompt_ids: list[int], sink: Sink) -> TextRequest:
        params = job.params.resolved(**self._defaults)
        room = self.adapter.context_length - len(prompt_ids)
        wanted = params.max_tokens if params.max_tokens is not None else self._default_max_tokens or room
        limit = min(wanted, room)
        stops = params.stop + (self.adapter.chat_stops if job.messages is not None else ())
        request = TextRequest(job, prompt_ids, params, limit, sink, StopMatcher(stops))
        self._queue.put(request)
        return request

    def cancel(self, request: TextRequest) -> None:
        request.cancelled = True

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while (request := self._queue.get()) is not None:
            self._busy = True
            try:
                self._run(request)
            except Exception:
                log.exception("generation failed")
                if not request.finished.is_set():
                    request.sink.error("internal_error", "the model failed while generating; see the worker log")
            finally:
                request.finished.set()
                self._busy = False
                self._on_step_end()
        while not self._queue.empty():
            if (left := self._queue.get()) is not None:
                left.sink.error("internal_error", "the worker is shutting down")
                left.finished.set()

    def _run(self, request: TextRequest) -> None:
        if request.cancelled:
            request.sink.error("cancelled", "the client cancelled the request")
            return
        if request.job.echo and isinstance(request.job.prompt, str):
            request.sink.prompt(request.job.prompt, None)
        if request.limit <= 0:  # max_tokens 0: nothing to generate
            request.sink.done("length", Usage(prompt_tokens=len(request.prompt_ids), completion_tokens=0))
            return
        generated, finish, last_sent = "", None, time.monotonic()
        stream = self.adapter.stream(request.job, request.params, request.limit, len(request.prompt_ids))
        try:
            for delta in stream:
                if request.cancelled:
                    request.sink.error("cancelled", "the client cancelled the request")
                    return
                generated += delta
                text = request.stops.push(delta)
                if request.stops.stopped:
                    finish = "stop"
                elif self.adapter.count_tokens(generated) >= request.limit:
                    finish = "length"
                send = bool(text) or time.monotonic() - last_sent >= self._keepalive
                if text:
                    request.sink.token(text)
                elif send:
                    request.sink.keepalive()  # text held back: a stop sequence may be starting
                if send:
                    last_sent = time.monotonic()
                    self._on_step_end()
                if finish:
                    break
        finally:
            stream.close()  # stops the model's generation loop
        if not request.stops.stopped and (tail := request.stops.flush()):
            request.sink.token(tail)
        produced = self.adapter.count_tokens(generated)
        self.generated_tokens += produced
        reason: FinishReason = finish or ("length" if produced >= request.limit else "stop")
        request.sink.done(reason, Usage(prompt_tokens=len(request.prompt_ids), completion_tokens=produced))
