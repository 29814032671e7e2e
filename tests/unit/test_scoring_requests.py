"""The gateway side of /v1/classify, /v1/score and /v1/rerank: request validation (400s naming the
parameter), pairing, the bodies rendered from a ScoresEvent (checked against
tests/schemas/scoring.schema.json), and the relay sending a ScoreJob as its own task, refused
before queueing by a model that cannot do it (fakeredis)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fakeredis.aioredis import FakeRedis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gateway.errors import InvalidRequest, install_error_handlers
from gateway.registry import Registry
from gateway.relay import Relay
from gateway.scoring_types import (
    MAX_SCORE_INPUTS,
    ClassificationRequest,
    RerankRequest,
    ScoreRequest,
    classification_body,
    rerank_body,
    score_body,
)
from gateway.settings import GatewaySettings
from protocol import CLASSIFIES, GENERATES, SCORES, TASK_SCORE, ModelCard, ScoreJob, ScoresEvent, cards_key
from protocol.models_file import load_models_file
from tests.scoring_schemas import assert_scoring_valid
from tests.tiny_models import write_models_file
from tests.unit.test_relay import RecordingCelery, heartbeat

LIMITS = GatewaySettings(max_prompt_chars=1000)


def test_classify_takes_one_text_or_many() -> None:
    assert ClassificationRequest(model="m", input="hi").to_job(LIMITS).texts == (("hi",),)
    job = ClassificationRequest(model="m", input=["a", "b"]).to_job(LIMITS)
    assert (job.mode, job.texts, job.param, job.capability) == ("classify", (("a",), ("b",)), "input", "classify")
    assert job.request_id.startswith("classify-")


def test_score_pairs_one_against_many_or_in_order() -> None:
    one = ScoreRequest(model="m", text_1="q", text_2=["a", "b"]).to_job(LIMITS)
    assert one.texts == (("q", "a"), ("q", "b")) and one.mode == "score" and one.param == "text_2"
    listed = ScoreRequest(model="m", text_1=["q"], text_2="a").to_job(LIMITS)
    assert listed.texts == (("q", "a"),)
    paired = ScoreRequest(model="m", queries=["q1", "q2"], documents=["a", "b"]).to_job(LIMITS)
    assert paired.texts == (("q1", "a"), ("q2", "b")) and paired.param == "documents"


def test_rerank_pairs_the_query_with_every_document_string_or_object() -> None:
    body = RerankRequest.model_validate({"model": "m", "query": "q", "documents": ["a", {"text": "b", "id": 7}]})
    job = body.to_job(LIMITS)
    assert job.texts == (("q", "a"), ("q", "b")) and job.param == "documents" and job.mode == "score"
    assert job.request_id.startswith("rerank-") and body.top_n is None and body.return_documents is True


def _param_of(make: Any) -> str | None:
    with pytest.raises(InvalidRequest) as err:
        make()
    assert err.value.status == 400
    return err.value.param


@pytest.mark.parametrize(
    "make,param",
    [
        (lambda: ClassificationRequest(model="m", input=[]).to_job(LIMITS), "input"),
        (lambda: ClassificationRequest(model="m", input="").to_job(LIMITS), "input"),
        (lambda: ClassificationRequest(model="m", input=["ok", ""]).to_job(LIMITS), "input"),
        (lambda: ClassificationRequest(model="m", input=["x"] * (MAX_SCORE_INPUTS + 1)).to_job(LIMITS), "input"),
        (lambda: ClassificationRequest(model="m", input="x" * 1001).to_job(LIMITS), "input"),
        (lambda: ScoreRequest(model="m", text_1=["a", "b"], text_2=["c", "d", "e"]).to_job(LIMITS), "text_2"),
        (lambda: ScoreRequest(model="m", text_1="a").to_job(LIMITS), "text_2"),
        (lambda: ScoreRequest(model="m").to_job(LIMITS), "text_1"),
        (lambda: ScoreRequest(model="m", text_1="a", text_2="b", documents=["c"]).to_job(LIMITS), "documents"),
        (lambda: ScoreRequest(model="m", queries="a", documents=[]).to_job(LIMITS), "documents"),
        (lambda: RerankRequest(model="m", query="", documents=["a"]).to_job(LIMITS), "query"),
        (lambda: RerankRequest(model="m", query="q", documents=[]).to_job(LIMITS), "documents"),
        (lambda: RerankRequest(model="m", query="q", documents=["a", ""]).to_job(LIMITS), "documents"),
    ],
)
def test_bad_requests_are_400_naming_the_parameter(make: Any, param: str) -> None:
    assert _param_of(make) == param


def _app_errors(route: str, model: type, body: dict) -> dict:
    """What the app answers for `body` when FastAPI validates it as `model` (no queue behind it)."""
    app = FastAPI()
    install_error_handlers(app)

    async def handler(request: Any) -> dict:
        return {}

    handler.__annotations__ = {"request": model, "return": dict}  # the class itself, not the name "model"
    app.post(route)(handler)
    raw = json.dumps(body)  # ASCII escapes: a lone surrogate travels as JSON spells it
    response = TestClient(app).post(route, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert_scoring_valid(response.json(), "Error")
    return response.json()["error"]


@pytest.mark.parametrize(
    "route,model,body,param",
    [
        ("/r", RerankRequest, {"model": "m", "query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
        ("/r", RerankRequest, {"model": "m", "query": "q", "documents": "a"}, "documents"),
        ("/r", RerankRequest, {"model": "m", "documents": ["a"]}, "query"),
        ("/c", ClassificationRequest, {"model": "m"}, "input"),
        ("/c", ClassificationRequest, {"model": "m", "input": "\ud800"}, "input"),
        ("/c", ClassificationRequest, {"model": "", "input": "x"}, "model"),
    ],
)
def test_schema_errors_are_400_naming_the_parameter(route: str, model: type, body: dict, param: str) -> None:
    assert _app_errors(route, model, body)["param"] == param


# -- rendering ------------------------------------------------------------------------------------


def _job(mode: str, n: int, prefix: str) -> ScoreJob:
    texts = tuple(("q", f"d{i}") if mode == "score" else (f"t{i}",) for i in range(n))
    return ScoreJob(request_id=f"{prefix}-1", model="m", mode=mode, texts=texts, expires_at=time.time() + 9)


def test_classification_body_names_the_likeliest_class() -> None:
    event = ScoresEvent(seq=1, rows=((0.1, 0.7, 0.2), (0.5, 0.2, 0.3)), labels=("neg", "neu", "pos"), prompt_tokens=9)
    body = classification_body(event, _job("classify", 2, "classify")).model_dump(mode="json")
    assert_scoring_valid(body, "ClassificationResponse")
    assert [(d["index"], d["label"], d["num_classes"]) for d in body["data"]] == [(0, "neu", 3), (1, "neg", 3)]
    assert body["data"][0]["probs"] == [0.1, 0.7, 0.2]
    assert body["usage"] == {"prompt_tokens": 9, "total_tokens": 9, "completion_tokens": 0}


def test_score_body_keeps_the_pairs_order() -> None:
    event = ScoresEvent(seq=1, rows=((0.25,), (0.75,)), prompt_tokens=12)
    body = score_body(event, _job("score", 2, "score")).model_dump(mode="json")
    assert_scoring_valid(body, "ScoreResponse")
    assert [(d["index"], d["score"], d["object"]) for d in body["data"]] == [(0, 0.25, "score"), (1, 0.75, "score")]


def test_rerank_body_sorts_best_first_applies_top_n_and_return_documents() -> None:
    event = ScoresEvent(seq=1, rows=((0.2,), (0.9,), (0.5,), (0.9,)), prompt_tokens=20)
    request = RerankRequest(model="m", query="q", documents=["a", "b", "c", "d"])
    body = rerank_body(event, _job("score", 4, "rerank"), request).model_dump(mode="json", exclude_none=True)
    assert_scoring_valid(body, "RerankResponse")
    assert [r["index"] for r in body["results"]] == [1, 3, 2, 0]  # ties keep the documents' order
    assert [r["document"]["text"] for r in body["results"]] == ["b", "d", "c", "a"]
    short = RerankRequest(model="m", query="q", documents=["a", "b", "c", "d"], top_n=2, return_documents=False)
    body = rerank_body(event, _job("score", 4, "rerank"), short).model_dump(mode="json", exclude_none=True)
    assert_scoring_valid(body, "RerankResponse")
    assert body["results"] == [{"index": 1, "relevance_score": 0.9}, {"index": 3, "relevance_score": 0.9}]
    many = RerankRequest(model="m", query="q", documents=["a", "b", "c", "d"], top_n=10)
    assert len(rerank_body(event, _job("score", 4, "rerank"), many).results) == 4


# -- the relay ------------------------------------------------------------------------------------


@pytest.fixture
def redis() -> FakeRedis:
    return FakeRedis()


@pytest.fixture
def relay(redis: FakeRedis, tmp_path: Path) -> Relay:
    models = write_models_file(tmp_path / "models.yaml", {"clf": {"path": tmp_path}, "xenc": {"path": tmp_path},
                                                          "chat": {"path": tmp_path}})  # fmt: skip
    return Relay(redis, RecordingCelery(redis), Registry(redis, load_models_file(models), 6.0), 30.0, 10.0)


async def _serving(redis: FakeRedis, model: str, capabilities: tuple) -> None:
    await heartbeat(redis, model, "w1")
    await redis.hset(cards_key(model), "w1", ModelCard(capabilities=capabilities, max_model_len=64).model_dump_json())


async def test_a_score_job_goes_to_its_models_queue_as_the_score_task(relay: Relay, redis: FakeRedis) -> None:
    await _serving(redis, "xenc", SCORES)
    job = RerankRequest(model="xenc", query="q", documents=["a"]).to_job(LIMITS)
    async with await relay.submit(job):
        [sent] = relay.celery.sent
    assert sent.name == TASK_SCORE and sent.options["queue"] == "xenc" and sent.subscribers == 1
    assert ScoreJob.model_validate(sent.args[0]) == job
    assert "score=1" in sent.options["argsrepr"] and "q / a" not in sent.options["argsrepr"]  # sizes, not texts


@pytest.mark.parametrize(
    "model,capabilities,job,what",
    [
        ("clf", CLASSIFIES, ScoreRequest(model="clf", text_1="q", text_2="d"), "does not support scoring or reranking"),
        ("chat", GENERATES, ClassificationRequest(model="chat", input="hi"), "does not support classification"),
        ("xenc", SCORES, None, "does not support chat completions"),
    ],
)
async def test_what_a_model_cannot_do_is_refused_before_queueing(relay: Relay, redis: FakeRedis, model: str,
                                                                 capabilities: tuple, job: Any, what: str) -> None:  # fmt: skip
    from protocol import ChatMessage, GenerateJob

    await _serving(redis, model, capabilities)
    if job is None:
        job = GenerateJob(request_id="chatcmpl-x", model=model, messages=(ChatMessage(role="user", content="Hi"),),
                          expires_at=time.time() + 60)  # fmt: skip
    else:
        job = job.to_job(LIMITS)
    with pytest.raises(InvalidRequest) as err:
        await relay.submit(job)
    assert err.value.param == "model" and what in err.value.message
    assert relay.celery.sent == []
