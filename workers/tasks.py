"""Thin task bodies: parse the job, run the engine, publish events.  One error boundary."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import redis
from celery import shared_task
from pydantic import ValidationError

import workers.lifecycle  # noqa: F401  (connects the start-up and heartbeat signal handlers)
from adapters import AdapterError, ContextLengthExceeded
from protocol import (
    TASK_EMBED,
    TASK_GENERATE,
    TASK_SCORE,
    TASK_TOKENIZE,
    Capability,
    EmbedJob,
    GenerateJob,
    ScoreJob,
    TokenizeJob,
    cancel_key_for,
)
from workers.cancels import CANCEL_POLL_SECONDS
from workers.contract import EmbedEngine, Engine, GenerationEngine, ScoreEngine
from workers.heartbeat import WorkerState
from workers.publisher import EventPublisher
from workers.tokenizing import answer_tokenize

log = logging.getLogger(__name__)



@shared_task(name=TASK_GENERATE, bind=True)
def generate(self: Any, payload: dict[str, Any]) -> None:
    run_job(self.app.state, payload)


@shared_task(name=TASK_EMBED, bind=True)
def embed(self: Any, payload: dict[str, Any]) -> None:
    run_embed_job(self.app.state, payload)


@shared_task(name=TASK_TOKENIZE, bind=True)
def tokenize(self: Any, payload: dict[str, Any]) -> None:
    run_tokenize_job(self.app.state, payload)


def run_tokenize_job(state: WorkerState, payload: dict[str, Any]) -> None:
    param = "tokens" if isinstance(payload, dict) and payload.get("tokens") is not None else "prompt"
    with _error_boundary(state, payload, param) as publisher:
        job = TokenizeJob.model_validate(payload)
        if (engine := _started(state, job, job.capability, publisher)) is not None:
            answer_tokenize(engine, job, publisher)


def run_embed_job(state: WorkerState, payload: dict[str, Any]) -> None:
    with _error_boundary(state, payload, "input") as publisher:
        job = EmbedJob.model_validate(payload)
        if (engine := _started(state, job, "embeddings", publisher)) is not None:
            vectors, tokens = cast(EmbedEngine, engine).run(job)
            publisher.embeddings(vectors, tokens)


@shared_task(name=TASK_SCORE, bind=True)
def score(self: Any, payload: dict[str, Any]) -> None:
    run_score_job(self.app.state, payload)


def run_score_job(state: WorkerState, payload: dict[str, Any]) -> None:
    """Classify texts or score text pairs (a ScoreJob); a row too long is a 400 naming it."""
    param = payload.get("param") if isinstance(payload, dict) else None
    with _error_boundary(state, payload, param if isinstance(param, str) else "input") as publisher:
        job = ScoreJob.model_validate(payload)
        if (engine := _started(state, job, job.capability, publisher)) is not None:
            scored = cast(ScoreEngine, engine).run(job)
            publisher.scores(scored.rows, scored.labels, scored.tokens)


def run_job(state: WorkerState, payload: dict[str, Any]) -> None:
    prompt_param = "messages" if isinstance(payload, dict) and payload.get("messages") else "prompt"
    with _error_boundary(state, payload, prompt_param) as publisher:
        _generate(state, GenerateJob.model_validate(payload), publisher)


def _started(state: WorkerState, job: EmbedJob | ScoreJob | TokenizeJob, capability: Capability,
             publisher: EventPublisher) -> Engine | None:  # fmt: skip
    """For jobs answered by one event: the engine to run `job` on, its start event sent; None when
    the client heard why not (expired or cancelled before a worker was free, no such model here)."""
    if job.expired or state.redis.exists(cancel_key_for(job.request_id)):
        publisher.error("expired", "the request expired before a worker was free")
        return None
    engine = _engine_that_can(state, job.model, capability, publisher)
    if engine is not None:
        publisher.start(worker=state.worker_id, prompt_tokens=0)
    return engine


def _engine_that_can(state: WorkerState, model: str, capability: Capability, publisher: EventPublisher) -> Engine | None:
    """The engine serving `model`, if it can do `capability`; else the client hears why."""
    engine = state.engines.get(model)
    if engine is None:
        publisher.error("model_not_found", f"this worker does not serve model {model!r}", param="model")
    elif capability not in engine.capabilities:
        publisher.error("invalid_request", f"model {model!r} does not support {capability} (it serves: "
                        f"{', '.join(engine.capabilities)})", param="model")  # fmt: skip
    else:
        return engine
    return None


@contextmanager
def _error_boundary(state: WorkerState, payload: Any, param: str) -> Iterator[EventPublisher]:
    """The one place a task's failures become error events (or log lines, when Redis is gone)."""
    request_id = str(payload.get("request_id", "")) if isinstance(payload, dict) else ""
    log_ttl = payload.get("log_ttl") if isinstance(payload, dict) else None  # a kept job's: read before validating
    publisher = EventPublisher(state.redis, request_id, log_ttl=log_ttl if isinstance(log_ttl, int) else None)
    try:
        yield publisher
    except ValidationError as exc:
        log.warning("rejected malformed job %s: %s", request_id or "?", exc)
        publisher.error("invalid_request", f"malformed job: {exc.errors()[0]['msg']}")
    except ContextLengthExceeded as exc:
        publisher.error("context_length_exceeded", str(exc), param=param)
    except AdapterError as exc:
        publisher.error("invalid_request", str(exc), param=exc.param or param)
    except redis.RedisError:
        log.exception("lost Redis while serving %s", request_id)
    except Exception:
        log.exception("request %s failed", request_id)
        if not publisher.finished:
            publisher.error("internal_error", "the worker failed on this request; see its log")


def _generate(state: WorkerState, job: GenerateJob, publisher: EventPublisher) -> None:
    cancel_key = cancel_key_for(job.request_id)
    if job.expired or state.redis.exists(cancel_key):
        log.info("dropping %s: its client is gone", job.request_id)
        publisher.error("expired", "the request expired before a worker was free")
        return
    found = _engine_that_can(state, job.model, "chat" if job.messages is not None else "completions", publisher)
    if found is None:
        return
    engine = cast(GenerationEngine, found)
    prompt_ids = engine.prompt_ids(job)
    publisher.start(worker=state.worker_id, prompt_tokens=len(prompt_ids))
    # From here on the engine publishes this request's events (batched per decode step); this
    # thread only watches for the client leaving.
    seq = engine.submit_job(job, prompt_ids, publisher.buffered(state.outbox))
    state.cancels.watch(job.request_id)
    try:
        while not seq.finished.wait(CANCEL_POLL_SECONDS):
            if seq.cancelled:
                continue
            if publisher.orphaned and not job.kept:
                log.info("request %s has no listener left (gateway gone?); stopping it", job.request_id)
                engine.cancel(seq)
            elif state.cancels.cancelled(job.request_id):
                log.info("request %s cancelled by its client", job.request_id)
                engine.cancel(seq)
    except redis.RedisError:
        engine.cancel(seq)  # nobody can receive its events; free the slot
        raise
    finally:
        state.cancels.forget(job.request_id)
