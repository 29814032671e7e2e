"""Sequence classifiers through the whole stack: /v1/classify on a three-class BERT classifier,
/v1/score and /v1/rerank on a cross-encoder (one label), both chosen by `adapter: auto` and served
by one worker; every answer equals the tiny model run here with plain transformers, and every
body matches tests/schemas/scoring.schema.json."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path

import httpx
import openai
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.processes import Worker, live_worker
from tests.integration.test_fuzz import JSON
from tests.scoring_schemas import assert_scoring_valid

TEXTS = ["the cat sat on the mat", "paris is the capital of france", "queue worker", "dog"]
QUERY = "what is the capital of france"


@pytest.fixture(scope="module")
def scoring_worker(env, workdir, redis_server, gateway) -> Iterator[Worker]:
    with live_worker(["tiny-classifier", "tiny-cross-encoder"], env, workdir, redis_server.client) as worker:
        yield worker


@cache
def _model(folder: Path) -> tuple:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModelForSequenceClassification.from_pretrained(folder).eval()


def _logits(folder: Path, *texts: str) -> torch.Tensor:
    tokenizer, model = _model(folder)
    with torch.no_grad():
        return model(**tokenizer(*texts, return_tensors="pt")).logits[0]


def _tokens(folder: Path, *texts: str) -> int:
    return len(_model(folder)[0](*texts)["input_ids"])


def _post(gateway, path: str, body: dict, status: int = 200) -> dict:
    response = httpx.post(f"{gateway.base_url}{path}", json=body, timeout=60)
    assert response.status_code == status, response.text
    if status != 200:
        assert_scoring_valid(response.json(), "Error")
    return response.json()


def test_classify_gives_the_models_class_probabilities(gateway, scoring_worker, family_dirs) -> None:
    folder = family_dirs["classifier"]
    response = httpx.post(f"{gateway.base_url}/v1/classify", json={"model": "tiny-classifier", "input": TEXTS},
                          timeout=60)  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    assert_scoring_valid(body, "ClassificationResponse")
    assert response.headers["x-request-id"] == body["id"] and body["model"] == "tiny-classifier"
    labels = ("negative", "neutral", "positive")
    for i, (text, item) in enumerate(zip(TEXTS, body["data"], strict=True)):
        expected = torch.softmax(_logits(folder, text), dim=-1)
        assert item["index"] == i and item["num_classes"] == 3
        assert item["probs"] == pytest.approx(expected.tolist(), abs=1e-5)
        assert item["label"] == labels[int(expected.argmax())]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == sum(_tokens(folder, t) for t in TEXTS)
    one = _post(gateway, "/classify", {"model": "tiny-classifier", "input": TEXTS[2]})  # vLLM's path, one text
    assert one["data"][0]["probs"] == pytest.approx(body["data"][2]["probs"], abs=1e-6)


def _sigmoid(folder: Path, *pair: str) -> float:
    return torch.sigmoid(_logits(folder, *pair))[0].item()


def test_score_pairs_one_against_many_and_in_order(gateway, scoring_worker, family_dirs) -> None:
    folder = family_dirs["cross_encoder"]
    body = _post(gateway, "/v1/score", {"model": "tiny-cross-encoder", "text_1": QUERY, "text_2": TEXTS})
    assert_scoring_valid(body, "ScoreResponse")
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    assert [d["score"] for d in body["data"]] == pytest.approx([_sigmoid(folder, QUERY, t) for t in TEXTS], abs=1e-5)
    assert body["usage"]["prompt_tokens"] == sum(_tokens(folder, QUERY, t) for t in TEXTS)

    paired = _post(gateway, "/score", {"model": "tiny-cross-encoder", "queries": TEXTS[:2], "documents": TEXTS[2:]})
    assert_scoring_valid(paired, "ScoreResponse")
    expected = [_sigmoid(folder, TEXTS[0], TEXTS[2]), _sigmoid(folder, TEXTS[1], TEXTS[3])]
    assert [d["score"] for d in paired["data"]] == pytest.approx(expected, abs=1e-5)


def test_classify_on_a_cross_encoder_gives_its_one_sigmoid(gateway, scoring_worker, family_dirs) -> None:
    body = _post(gateway, "/v1/classify", {"model": "tiny-cross-encoder", "input": "dog"})
    assert body["data"][0]["num_classes"] == 1 and body["data"][0]["label"] == "LABEL_0"
    assert body["data"][0]["probs"][0] == pytest.approx(_sigmoid(family_dirs["cross_encoder"], "dog"), abs=1e-5)


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_rerank_orders_the_documents_best_first(gateway, scoring_worker, family_dirs, path: str) -> None:
    folder = family_dirs["cross_encoder"]
    documents = [TEXTS[0], {"text": TEXTS[1]}, TEXTS[2], {"text": TEXTS[3], "title": "ignored"}]
    body = _post(gateway, path, {"model": "tiny-cross-encoder", "query": QUERY, "documents": documents})
    assert_scoring_valid(body, "RerankResponse")
    scores = [_sigmoid(folder, QUERY, t) for t in TEXTS]
    order = sorted(range(4), key=lambda i: -scores[i])
    assert len(set(round(s, 4) for s in scores)) == 4, "the tiny model should tell the documents apart"
    assert [r["index"] for r in body["results"]] == order
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx([scores[i] for i in order], abs=1e-5)
    assert [r["document"]["text"] for r in body["results"]] == [TEXTS[i] for i in order]
    assert body["usage"]["total_tokens"] == sum(_tokens(folder, QUERY, t) for t in TEXTS)


def test_rerank_top_n_and_return_documents(gateway, scoring_worker) -> None:
    full = _post(gateway, "/v1/rerank", {"model": "tiny-cross-encoder", "query": QUERY, "documents": TEXTS})
    top = _post(gateway, "/v1/rerank", {"model": "tiny-cross-encoder", "query": QUERY, "documents": TEXTS,
                                        "top_n": 2, "return_documents": False})  # fmt: skip
    assert_scoring_valid(top, "RerankResponse")
    assert top["results"] == [{"index": r["index"], "relevance_score": r["relevance_score"]} for r in full["results"][:2]]
    more = _post(gateway, "/v1/rerank", {"model": "tiny-cross-encoder", "query": QUERY, "documents": TEXTS, "top_n": 9})
    assert len(more["results"]) == 4


def test_concurrent_requests_each_get_their_own_answer(gateway, scoring_worker) -> None:
    from concurrent.futures import ThreadPoolExecutor

    bodies = [{"model": "tiny-cross-encoder", "query": TEXTS[i % 4], "documents": TEXTS[: 2 + i % 3]} for i in range(8)]
    alone = [_post(gateway, "/v1/rerank", body)["results"] for body in bodies]
    with ThreadPoolExecutor(8) as pool:  # more requests than the model's 2 slots: they take turns
        together = list(pool.map(lambda body: _post(gateway, "/v1/rerank", body)["results"], bodies))
    for one, other in zip(alone, together, strict=True):
        assert [r["index"] for r in one] == [r["index"] for r in other]
        assert [r["relevance_score"] for r in one] == pytest.approx([r["relevance_score"] for r in other], abs=1e-6)


def test_models_say_which_classifier_scores(gateway, scoring_worker) -> None:
    by_id = {m["id"]: m for m in httpx.get(f"{gateway.base_url}/v1/models", timeout=10).json()["data"]}
    assert by_id["tiny-classifier"]["capabilities"] == ["classify"]
    assert by_id["tiny-cross-encoder"]["capabilities"] == ["classify", "score"]
    assert by_id["tiny-cross-encoder"]["max_model_len"] == 64  # the tiny BERT's max_position_embeddings


@pytest.mark.parametrize(
    "path,body,what",
    [
        ("/v1/classify", {"model": "tiny-a", "input": "hi"}, "does not support classification"),
        ("/v1/rerank", {"model": "tiny-a", "query": "q", "documents": ["d"]}, "does not support scoring"),
        ("/v1/score", {"model": "tiny-classifier", "text_1": "q", "text_2": "d"}, "does not support scoring"),
        ("/v1/rerank", {"model": "tiny-classifier", "query": "q", "documents": ["d"]}, "does not support scoring"),
        ("/v1/embeddings", {"model": "tiny-cross-encoder", "input": "hi"}, "does not support embeddings"),
    ],
)
def test_asking_a_model_for_what_it_cannot_do_is_a_400_naming_model(gateway, workers, scoring_worker, path: str,
                                                                    body: dict, what: str) -> None:  # fmt: skip
    error = _post(gateway, path, body, status=400)["error"]
    assert error["param"] == "model" and what in error["message"]


def test_chatting_with_a_classifier_is_a_clear_error(client: openai.OpenAI, scoring_worker) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny-classifier", messages=[{"role": "user", "content": "Hi"}])
    assert err.value.body["param"] == "model" and "does not support chat completions" in err.value.message


@pytest.mark.parametrize(
    "path,body,param,code",
    [
        ("/v1/classify", {"input": []}, "input", "invalid_request"),
        ("/v1/classify", {"input": ""}, "input", "invalid_request"),
        ("/v1/classify", {"input": ["the cat", "cat " * 100]}, "input", "context_length_exceeded"),  # 64 tokens
        ("/v1/classify", {"input": ["x"] * 2049}, "input", "invalid_request"),
        ("/v1/classify", {"input": 5}, "input", "invalid_request"),
        ("/v1/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, "text_2", "invalid_request"),
        ("/v1/score", {"text_1": "a"}, "text_2", "invalid_request"),
        ("/v1/score", {"text_1": "cat " * 40, "text_2": "dog " * 40}, "text_2", "context_length_exceeded"),
        ("/v1/rerank", {"query": "q", "documents": []}, "documents", "invalid_request"),
        ("/v1/rerank", {"query": "q", "documents": ["d"], "top_n": 0}, "top_n", "invalid_request"),
        ("/v1/rerank", {"query": "q", "documents": ["dog", "cat " * 100]}, "documents", "context_length_exceeded"),
        ("/v1/rerank", {"documents": ["d"]}, "query", "invalid_request"),
    ],
)
def test_bad_requests_are_400_naming_the_parameter(gateway, scoring_worker, path: str, body: dict, param: str,
                                                   code: str) -> None:  # fmt: skip
    model = "tiny-classifier" if path == "/v1/classify" else "tiny-cross-encoder"
    error = _post(gateway, path, {"model": model, **body}, status=400)["error"]
    assert (error["param"], error["code"]) == (param, code), error
    if code == "context_length_exceeded":
        assert "[1]" in error["message"] or "[0]" in error["message"]


def test_an_unknown_model_is_404(gateway, scoring_worker) -> None:
    error = _post(gateway, "/v1/rerank", {"model": "no-such-model", "query": "q", "documents": ["d"]}, status=404)
    assert error["error"]["param"] == "model"


TEXT = st.text(max_size=30) | st.sampled_from(TEXTS)
TEXTS_OR_ONE = TEXT | st.lists(TEXT | st.fixed_dictionaries({"text": TEXT}), max_size=4) | JSON
BODY = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["tiny-classifier", "tiny-cross-encoder", "tiny-a", "no-such-model", ""]) | JSON,
        "input": TEXTS_OR_ONE, "text_1": TEXTS_OR_ONE, "text_2": TEXTS_OR_ONE, "queries": TEXTS_OR_ONE,
        "documents": TEXTS_OR_ONE, "query": TEXT | JSON, "top_n": st.integers(-2, 6) | JSON,
        "return_documents": st.booleans() | JSON,
    },
)  # fmt: skip
ANSWERS = {"/v1/classify": "ClassificationResponse", "/v1/score": "ScoreResponse", "/v1/rerank": "RerankResponse"}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(sorted(ANSWERS)), body=BODY)
def test_random_bodies_never_cause_a_server_error(gateway, scoring_worker, path: str, body: dict) -> None:
    response = httpx.post(f"{gateway.base_url}{path}", json=body, timeout=60)
    assert response.status_code < 500, (response.status_code, response.text)
    assert_scoring_valid(response.json(), ANSWERS[path] if response.status_code == 200 else "Error")
