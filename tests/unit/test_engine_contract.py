"""The declared engine contract: every adapter kind has an engine, every engine offers what the
worker and its heartbeat use, and tasks dispatch on capabilities (a worker refuses what its
model cannot do even if the gateway let it through)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import fakeredis
import pytest

from adapters import ADAPTER_NAMES, adapter_class
from protocol import (
    EMBEDS,
    GENERATES,
    ChatMessage,
    EmbedJob,
    ErrorEvent,
    GenerateJob,
    ModelCard,
    ModelSpec,
    channel_for,
    decode_event,
)
from workers.contract import EmbedEngine, Engine, GenerationEngine, ScoreEngine
from workers.engines import ENGINES, pool_slots
from workers.settings import WorkerSettings
from workers.tasks import run_embed_job, run_job

SETTINGS = WorkerSettings(result_ttl=60)


def members(protocol: type) -> set[str]:
    """The names a Protocol declares (its own and its bases'), methods and attributes alike."""
    names: set[str] = set()
    for klass in protocol.__mro__:
        if klass.__module__ == "workers.contract":
            names |= {n for n in vars(klass) if not n.startswith("_")} | set(getattr(klass, "__annotations__", {}))
    return names


@pytest.mark.parametrize("name", [n for n in ADAPTER_NAMES if n != "auto"])
def test_every_adapter_kind_has_an_engine(name: str) -> None:
    assert adapter_class(name).kind in ENGINES


@pytest.mark.parametrize("kind", list(ENGINES))
def test_every_engine_offers_the_declared_contract(kind: str) -> None:
    engine = ENGINES[kind]
    role = {"embed": EmbedEngine, "classify": ScoreEngine}.get(kind, GenerationEngine)
    missing = {name for name in members(role) if not hasattr(engine, name)} - {"slots"}  # set per instance
    assert missing == set()
    assert set(members(Engine)) >= {"capabilities", "card", "stats", "close", "free_slots"}
    assert set(engine.capabilities) <= {"chat", "completions", "embeddings", "classify", "score"}


def test_pool_slots_follow_the_engine_of_the_adapter_kind() -> None:
    chatglm = ModelSpec(name="glm", adapter="chatglm", path="/nowhere", slots=8)  # remote code: one at a time
    echo = ModelSpec(name="echo", adapter="echo", slots=8)
    assert pool_slots(chatglm) == 1 and pool_slots(echo) == 8


def _error_for(job: GenerateJob | EmbedJob, engine: object) -> ErrorEvent:
    client = fakeredis.FakeRedis()
    subscriber = client.pubsub()
    subscriber.subscribe(channel_for(job.request_id))
    subscriber.get_message(timeout=1)  # the subscription's confirmation
    state = SimpleNamespace(redis=client, engines={job.model: engine}, worker_id="w1", outbox=None, settings=SETTINGS)
    (run_embed_job if isinstance(job, EmbedJob) else run_job)(state, job.model_dump(mode="json"))
    message = subscriber.get_message(timeout=1)
    assert message is not None, "the worker answered nothing"
    event = decode_event(message["data"])
    assert isinstance(event, ErrorEvent), event
    return event


def test_a_worker_refuses_a_job_its_engine_cannot_do_naming_model() -> None:
    embedder = SimpleNamespace(capabilities=EMBEDS, card=lambda: ModelCard(capabilities=EMBEDS))
    chat = GenerateJob(request_id="r1", model="m", messages=(ChatMessage(role="user", content="Hi"),),
                       expires_at=time.time() + 60)  # fmt: skip
    event = _error_for(chat, embedder)
    assert (event.code, event.param) == ("invalid_request", "model")
    assert "does not support chat" in event.message

    generator = SimpleNamespace(capabilities=GENERATES)
    embed = EmbedJob(request_id="r2", model="m", inputs=("Hi",), expires_at=time.time() + 60)
    event = _error_for(embed, generator)
    assert (event.code, event.param) == ("invalid_request", "model") and "does not support embeddings" in event.message


def test_a_model_the_worker_does_not_serve_is_model_not_found() -> None:
    job = GenerateJob(request_id="r3", model="m", prompt="Hi", expires_at=time.time() + 60)
    client = fakeredis.FakeRedis()
    subscriber = client.pubsub()
    subscriber.subscribe(channel_for(job.request_id))
    subscriber.get_message(timeout=1)
    run_job(SimpleNamespace(redis=client, engines={}, worker_id="w1", outbox=None, settings=SETTINGS), job.model_dump(mode="json"))
    event = decode_event(subscriber.get_message(timeout=1)["data"])
    assert isinstance(event, ErrorEvent) and event.code == "model_not_found"
