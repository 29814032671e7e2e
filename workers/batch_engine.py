"""The batch engine: continuous batching over the adapter's `DecodeBatch`.

Requests join the running batch at the next step boundary and leave it as soon as they finish
or are cancelled, each with its own sampling parameters, random generator, stop sequences and
token limit.  A step prefills at most `prefill_chunk` prompt tokens of newcomers (together, in
arrival order; a longer prompt over several steps), sends their first tokens, then decodes one
token for every running request: a burst of arrivals is served first come first, and no
newcomer makes the running requests wait longer than one chunk.  Chat and completions share this
path; only the prompt building differs.  No Celery here: results go to each request's `Sink`.

One request cannot hurt another: a request joins only when the batch's KV cache, with it, stays
within the model's budget (else it waits; one that could never fit is refused before it starts),
a failure while sampling or emitting one row fails that row alone, and a failed prefill fails
only the newcomers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from adapters import ModelAdapter
from adapters.base import Detokenizer, Prefill, PromptScores
from adapters.guidance import LANDING_TOKENS, GrammarState
from adapters.sampling import apply_penalties, logprobs_of, make_generator, next_token
from adapters.stops import StopMatcher
from protocol import (
    GENERATES,
    ErrorCode,
    GenerateJob,
    ModelSpec,
    SamplingParams,
    TokenLogprob,
    Usage,
)
from workers.contract import EngineBase, FinishReason, Sink
from workers.intake import Intake
from workers.logprobs import echo_text, prompt_tokens, token_logprob
from workers.sizing import batch_slots, device_cap, prefill_tokens

log = logging.getLogger(__name__)

@dataclass(eq=False)
class Sequence:
    """One request inside the engine."""

    prompt_ids: list[int]
    params: SamplingParams  # resolved: temperature and top_p are set
    limit: int  # most tokens it may generate
    sink: Sink
    detokenizer: Detokenizer
    stops: StopMatcher
    generator: torch.Generator | None
    produced: int = 0
    last_token: int = -1
    counts: Counter[int] = field(default_factory=Counter)  # generated tokens, for penalties
    cancelled: bool = False
    finished: threading.Event = field(default_factory=threading.Event)
    last_sent: float = field(default_factory=time.monotonic)  # when its sink last heard from the engine
    grammar: GrammarState | None = None  # what its output must match (structured outputs)
    echo: str | None = None  # the prompt's text, sent back before the completion
    prompt_scores: PromptScores | None = None  # from the prefill, when prompt logprobs were asked for
    cumulative: float | None = None  # the generated tokens' logprobs summed, when asked for


class BatchEngine(EngineBase):
    """The engine of batch adapters (logits out): continuous batching over a `DecodeBatch`."""

    capabilities = GENERATES

    def __init__(self, adapter: ModelAdapter, slots: int | None = None,
                 on_step_end: Callable[[], None] = lambda: None, keepalive: float = 5.0,
                 prefill_chunk: int | None = None) -> None:  # fmt: skip
        self.adapter = adapter
        self._batch = adapter.new_batch()
        device = str(getattr(adapter, "device", adapter.spec.device))
        wanted = slots if slots is not None else batch_slots(adapter.spec, adapter.kv_budget_tokens, device)
        self.slots = max(1, min(wanted, self._batch.max_rows))
        self.kv_budget = adapter.kv_budget_tokens  # token positions (rows x columns); None: unbounded
        self._on_step_end = on_step_end
        self._keepalive = keepalive  # seconds a request may go without an event
        # Defaults for a request's unset temperature / top_p: the models file, then the model.
        chosen = adapter.spec.defaults.model_dump(exclude_none=True, exclude={"max_tokens"})
        self._defaults = {**adapter.default_sampling(), **chosen}
        self._intake = Intake(adapter, self.kv_budget, self._batch.scores_prompts)
        self.generated_tokens = 0
        self.prefill_chunk = prefill_chunk or prefill_tokens(adapter.spec, device)  # tokens one step may prefill
        self._rows: list[Sequence] = []  # in batch row order
        self._joining: list[Sequence] = []  # being prefilled (by self._prefilling), to join next
        self._prefilling: Prefill | None = None
        self._waiting: deque[Sequence] = deque()
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name=f"engine-{adapter.spec.name}", daemon=True)
        self._thread.start()

    @staticmethod
    def pool_slots(spec: ModelSpec) -> int:
        return spec.slots or device_cap(spec.device)

    @property
    def free_slots(self) -> int:
        """Slots neither decoding nor about to join (a snapshot, for heartbeats)."""
        return max(0, self.slots - len(self._rows) - len(self._joining) - len(self._waiting))

    def stats(self) -> dict[str, int]:
        """Counters for metrics: requests in the batch, its size, tokens generated since start,
        the KV cache it holds and may hold (token positions), the adapter's caches."""
        stats = {"running": len(self._rows), "slots": self.slots, "tokens": self.generated_tokens,
                 "waiting": len(self._waiting) + len(self._joining),  # being prefilled counts as waiting
                 "kv_tokens": len(self._batch) * self._batch.columns}  # fmt: skip
        if self.kv_budget is not None:
            stats["kv_budget_tokens"] = self.kv_budget
        return {**stats, **self.adapter.cache_stats()}

    # ---- called from request threads -------------------------------------------------------

    def prompt_ids(self, job: GenerateJob) -> list[int]:
        """The job's prompt as token ids, checked (workers/intake.py); its grammar is compiled here
        too, in the task thread, so a grammar that fails is refused before the request starts."""
        return self._intake.prompt_ids(job)

    def submit_job(self, job: GenerateJob, prompt_ids: list[int], sink: Sink) -> Sequence:
        """Queue `job` (tokenized by `prompt_ids`); chats also stop at the template's boundaries."""
        extra = self.adapter.chat_stops if job.messages is not None else ()
        echo = echo_text(job, self.adapter, prompt_ids)
        return self.submit(prompt_ids, job.params, sink, extra_stops=extra, echo=echo, grammar=self._intake.grammar(job))

    def submit(self, prompt_ids: list[int], params: SamplingParams, sink: Sink, extra_stops: tuple[str, ...] = (),
               echo: str | None = None, grammar: GrammarState | None = None) -> Sequence:  # fmt: skip
        """Queue a sequence for the next step boundary; its results go to `sink` (`echo`, the
        prompt's text, first; `grammar`: what its output must match)."""
        params = params.resolved(**self._defaults)
        seq = Sequence(
            prompt_ids=prompt_ids,
            params=params,
            limit=self._intake.limit(params, len(prompt_ids)),
            sink=sink,
            detokenizer=self.adapter.detokenizer(prompt_ids),
            stops=StopMatcher(params.stop + tuple(s for s in extra_stops if s not in params.stop)),
            generator=make_generator(params, torch.device("cpu")),
            grammar=grammar,
            echo=echo,
            cumulative=0.0 if params.cumulative_logprob else None,
        )
        with self._wake:
            if self._closing:
                raise RuntimeError("the engine is shut down")
            self._waiting.append(seq)
            self._wake.notify()
        return seq

    def cancel(self, seq: Sequence) -> None:
        """Stop `seq` at the next step; its sink gets a 'cancelled' error."""
        seq.cancelled = True
        with self._wake:
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout=30)

    # ---- the decode loop (engine thread) ---------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._rows and not self._waiting and not self._joining and not self._closing:
                    self._wake.wait()
                if self._closing:
                    break
                gone = [seq for seq in self._waiting if seq.cancelled]  # left while waiting for room
                for seq in gone:
                    self._waiting.remove(seq)
                if not self._joining:
                    self._joining = self._admit()
                waiting = list(self._waiting)
            for seq in gone:
                self._fail(seq, "cancelled", "the client cancelled the request")
            try:
                self._send_keepalives([*self._rows, *self._joining, *waiting])
                if self._joining:
                    self._prefill()
                    self._on_step_end()  # the newcomers' first tokens go out before the decode step
                if self._rows:
                    self._decode()
            except Exception:  # a broken step must not kill the worker: fail its requests, start afresh
                log.exception("decode step failed; failing %d requests", len(self._rows) + len(self._joining))
                for seq in {*self._rows, *self._joining}:
                    if not seq.finished.is_set():
                        self._fail(seq, "internal_error", "the model failed while generating; see the worker log")
                self._rows, self._joining, self._prefilling = [], [], None
                self._batch = self.adapter.new_batch()
            finally:
                self._on_step_end()
        for seq in [*self._rows, *self._joining, *self._waiting]:
            self._fail(seq, "internal_error", "the worker is shutting down")
        self._on_step_end()

    def _admit(self) -> list[Sequence]:
        """The waiting requests that join now, in arrival order: while a slot is free, the KV
        cache, with them, stays within the budget (the first in line always fits an empty batch)
        and their prefill stays within one chunk (the first in line always joins: a prompt longer
        than a chunk is prefilled over several steps)."""
        joiners: list[Sequence] = []
        columns = 0  # the joiners' prefill, padded to the longest
        while self._waiting and len(self._rows) + len(joiners) < self.slots:
            candidates = [*joiners, self._waiting[0]]
            if self.kv_budget is not None and (self._rows or joiners) and self._peak_kv(candidates) > self.kv_budget:
                break
            first = self._waiting[0]  # computed whole when its prompt is scored
            wider = max(columns, self._batch.prefill_columns([first.prompt_ids], [first.params.prompt_logprobs is not None]))
            if joiners and len(candidates) * wider > self.prefill_chunk:
                break
            joiners.append(self._waiting.popleft())
            columns = wider
        return joiners

    def _peak_kv(self, joiners: list[Sequence]) -> int:
        """Token positions the batch's KV cache could reach with `joiners` in it: every row padded
        to the widest, growing one column a step until the longest-running row is done."""
        rows = [*self._rows, *joiners]
        whole = [s.params.prompt_logprobs is not None for s in joiners]
        width = max(self._batch.columns, self._batch.width_with([s.prompt_ids for s in joiners], whole))
        return len(rows) * (width + max(s.limit - s.produced for s in rows))

    def _send_keepalives(self, seqs: list[Sequence]) -> None:
        """A request that has had no event for a while (text held back for a stop sequence, or
        waiting for room) gets a keep-alive, so its gateway can tell a busy worker from a dead one."""
        now = time.monotonic()
        for seq in seqs:
            if now - seq.last_sent >= self._keepalive and not seq.finished.is_set():
                seq.last_sent = now
                seq.sink.keepalive()

    @torch.inference_mode()
    def _prefill(self) -> None:
        """Compute one chunk of the newcomers' prompts (at most `prefill_chunk` tokens, so the
        running requests wait at most that long for their next token); once their prompts are
        done they join the batch with their first token.  A failed prefill fails only the
        newcomers (the batch is left as it was)."""
        joining = self._joining
        if all(seq.cancelled for seq in joining):
            for seq in joining:
                self._fail(seq, "cancelled", "the client cancelled the request")
            self._joining, self._prefilling = [], None
            return
        try:
            if self._prefilling is None:
                prompts, scored = [s.prompt_ids for s in joining], [s.params.prompt_logprobs for s in joining]
                self._prefilling = self._batch.start(prompts, scored)
            logits = self._prefilling.feed(max(1, self.prefill_chunk // len(joining)))
        except Exception:
            log.exception("prefilling %d new requests failed; the %d running ones go on", len(joining),
                          len(self._rows))  # fmt: skip
            for seq in joining:
                self._fail(seq, "internal_error", "the model failed on this prompt; see the worker log")
            self._joining, self._prefilling = [], None
            return
        if logits is None:
            return  # more chunks to come
        for seq, scores in zip(joining, self._prefilling.prompt_scores):
            seq.prompt_scores = scores
        self._joining, self._prefilling = [], None
        offset = len(self._rows)
        self._rows.extend(joining)
        self._advance(joining, logits, offset)

    @torch.inference_mode()
    def _decode(self) -> None:
        """One token for every running sequence."""
        logits = self._batch.step([s.last_token for s in self._rows])
        self._advance(self._rows, logits, offset=0)

    def _advance(self, stepping: list[Sequence], logits: torch.Tensor, offset: int) -> None:
        """Sample one token for each of `stepping` (rows offset.. of the batch); drop the finished.
        A row with a grammar samples among the tokens it allows (its own row of logits masked)."""
        held = [i for i, seq in enumerate(stepping) if seq.grammar is not None and not seq.cancelled]
        if held and self.adapter.grammars is not None:
            near = [stepping[i].limit - stepping[i].produced <= min(LANDING_TOKENS, stepping[i].limit // 4) for i in held]
            self.adapter.grammars.mask_rows(logits, held, [stepping[i].grammar for i in held], near)
        greedy = logits.argmax(dim=-1).tolist()
        done = []
        for i, seq in enumerate(stepping):
            if seq.cancelled:
                self._fail(seq, "cancelled", "the client cancelled the request")
            elif not self._advance_row(seq, logits[i], greedy[i]):
                continue
            done.append(offset + i)
        if done:
            self._batch.remove(done)
            gone = set(done)
            self._rows = [s for i, s in enumerate(self._rows) if i not in gone]

    def _advance_row(self, seq: Sequence, logits: torch.Tensor, argmax: int) -> bool:
        """Sample, emit and account one token of `seq`; whether it is finished.  Whatever goes
        wrong here fails this request alone."""
        try:
            if seq.produced == 0:
                self._send_prompt(seq)
            if seq.params.max_tokens == 0:  # the prompt only (scored, echoed)
                return self._done(seq, "length")
            token = self._choose(seq, logits, argmax)
            if seq.grammar is not None and not seq.grammar.consume(token):
                self._fail(seq, "internal_error", f"no token of this model continues the requested grammar here "
                           f"({seq.grammar.error})")  # fmt: skip
                return True
            logprob = token_logprob(self.adapter, logits, token, seq.params.logprobs)
            if seq.cumulative is not None:
                seq.cumulative += logprob.logprob if logprob is not None else logprobs_of(logits, token, 0)[0]
            return self._accept(seq, token, logprob)
        except Exception:
            log.exception("generating a token failed; failing that request only")
            self._fail(seq, "internal_error", "the worker failed while generating this request; see its log")
            return True

    @staticmethod
    def _choose(seq: Sequence, logits: torch.Tensor, argmax: int) -> int:
        params = seq.params
        if params.penalized:
            logits = apply_penalties(logits, seq.counts, params)
            return int(torch.argmax(logits)) if params.greedy else next_token(logits, params, seq.generator)
        return argmax if params.greedy else next_token(logits, params, seq.generator)

    def _send_prompt(self, seq: Sequence) -> None:
        """The prompt's echo and scores, when asked for: before its first token."""
        if seq.echo is None and seq.prompt_scores is None:
            return
        scores, seq.prompt_scores = seq.prompt_scores, None
        seq.sink.prompt(seq.echo, prompt_tokens(self.adapter, seq.prompt_ids, scores) if scores is not None else None)
        seq.last_sent = time.monotonic()

    @staticmethod
    def _done(seq: Sequence, finish: FinishReason) -> bool:
        usage = Usage(prompt_tokens=len(seq.prompt_ids), completion_tokens=seq.produced)
        seq.sink.done(finish, usage, **({} if seq.cumulative is None else {"cumulative_logprob": seq.cumulative}))
        seq.finished.set()
        return True

    def _accept(self, seq: Sequence, token: int, logprob: TokenLogprob | None = None) -> bool:
        """Take one generated token; emit its text; return True when the sequence is finished."""
        seq.produced += 1
        self.generated_tokens += 1
        seq.last_token = token
        if seq.params.penalized:
            seq.counts[token] += 1
        eos = token in self.adapter.eos_ids
        text = seq.stops.push(seq.detokenizer.flush() if eos else seq.detokenizer.push(token))
        finish: FinishReason | None = "stop" if eos or seq.stops.stopped else None
        if finish is None and seq.produced >= seq.limit:
            text += seq.stops.push(seq.detokenizer.flush())
            finish = "stop" if seq.stops.stopped else "length"
        if finish is not None and not seq.stops.stopped:
            text += seq.stops.flush()
        if text or logprob is not None:
            seq.sink.token(text, (logprob,) if logprob is not None else None)
            seq.last_sent = time.monotonic()
        return finish is not None and self._done(seq, finish)

    @staticmethod
    def _fail(seq: Sequence, code: ErrorCode, message: str) -> None:
        try:
            seq.sink.error(code, message)
        except Exception:  # the loop must survive a broken sink
            log.exception("could not report %s for a request", code)
        finally:
            seq.finished.set()

