"""Sequence classifiers on the worker side: the adapter `auto` picks for *ForSequenceClassification
folders, its activations, the scoring engine (chunked batches equal the model run row by row) and
the task (its events, its refusals), on tiny random BERT classifiers; fakeredis for the task."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import fakeredis
import pytest
import torch

from adapters import ContextLengthExceeded, adapter_for
from adapters.classifier import activation_of
from adapters.select import choose_adapter
from protocol import (
    CLASSIFIES,
    SCORES,
    ErrorEvent,
    ModelSpec,
    ScoreJob,
    ScoresEvent,
    StartEvent,
    channel_for,
    decode_event,
)
from tests.tiny_families import make_tiny_classifier, make_tiny_cross_encoder, make_tiny_encoder
from workers import score_engine
from workers.score_engine import ScoringEngine
from workers.settings import WorkerSettings
from workers.tasks import run_score_job

TEXTS = ("the cat sat on the mat", "paris is the capital of france", "queue worker", "dog")


def _load(folder: Path, name: str) -> ScoringEngine:
    spec = ModelSpec(name=name, path=folder, device="cpu")
    adapter = adapter_for(spec)(spec, folder)
    adapter.load()
    return ScoringEngine(adapter, slots=2)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> ScoringEngine:
    return _load(make_tiny_classifier(tmp_path_factory.mktemp("classifier")), "clf")


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> ScoringEngine:
    return _load(make_tiny_cross_encoder(tmp_path_factory.mktemp("cross")), "xenc")


def _job(mode: str, rows: list[tuple[str, ...]], model: str = "clf", param: str = "input") -> ScoreJob:
    return ScoreJob(request_id=f"{mode}-1", model=model, mode=mode, texts=tuple(rows), param=param,
                    expires_at=time.time() + 60)  # fmt: skip


def _logits(engine: ScoringEngine, *texts: str) -> torch.Tensor:
    """The model run directly on one row, as transformers' own tokenizer call prepares it."""
    adapter = engine.adapter
    with torch.no_grad():
        return adapter.model(**adapter.tokenizer(*texts, return_tensors="pt")).logits[0]


def test_auto_picks_the_classifier_for_sequence_classification_folders(tmp_path: Path) -> None:
    classifier, cross = make_tiny_classifier(tmp_path / "c"), make_tiny_cross_encoder(tmp_path / "x")
    encoder = make_tiny_encoder(tmp_path / "e")
    assert choose_adapter(ModelSpec(name="c", path=classifier)) == "classifier"
    assert choose_adapter(ModelSpec(name="x", path=cross)) == "classifier"
    assert choose_adapter(ModelSpec(name="e", path=encoder)) == "embeddings"  # a plain BertModel still embeds
    assert adapter_for(ModelSpec(name="c", path=classifier)).kind == "classify"


def test_what_each_classifier_announces(classifier: ScoringEngine, cross_encoder: ScoringEngine) -> None:
    assert classifier.adapter.labels == ("negative", "neutral", "positive")
    assert classifier.capabilities == CLASSIFIES and classifier.adapter.activation == "softmax"
    assert cross_encoder.capabilities == SCORES and cross_encoder.adapter.activation == "sigmoid"
    card = cross_encoder.card()
    assert card.can("score") and card.can("classify") and card.max_model_len == 64  # max_position_embeddings
    assert not classifier.card().can("score")


@pytest.mark.parametrize(
    "config,expected",
    [
        ({"num_labels": 1}, "sigmoid"),
        ({"id2label": {"0": "a", "1": "b"}}, "softmax"),
        ({"id2label": {"0": "a"}}, "sigmoid"),
        ({"num_labels": 4, "problem_type": "multi_label_classification"}, "sigmoid"),
        ({"num_labels": 1, "sentence_transformers": {"activation_fn": "torch.nn.modules.linear.Identity"}}, "identity"),
        ({"num_labels": 3, "sentence_transformers": {"activation_fn": "torch.nn.modules.activation.Sigmoid"}}, "sigmoid"),
        ({}, "softmax"),  # transformers' default: two labels
    ],
)
def test_activation_follows_sentence_transformers_and_the_pipeline(config: dict, expected: str) -> None:
    assert activation_of(config) == expected


def test_classify_gives_the_softmax_of_the_models_logits(classifier: ScoringEngine) -> None:
    scored = classifier.run(_job("classify", [(t,) for t in TEXTS]))
    assert scored.labels == ("negative", "neutral", "positive") and len(scored.rows) == len(TEXTS)
    for text, probs in zip(TEXTS, scored.rows):
        expected = torch.softmax(_logits(classifier, text), dim=-1)
        assert torch.allclose(torch.tensor(probs), expected, atol=1e-5)  # padding in the batch changes nothing
    assert scored.tokens == sum(len(classifier.adapter.tokenizer(t)["input_ids"]) for t in TEXTS)


def test_scores_are_the_sigmoid_of_the_cross_encoders_logit(cross_encoder: ScoringEngine) -> None:
    pairs = [("the cat", text) for text in TEXTS]
    scored = cross_encoder.run(_job("score", pairs, model="xenc", param="documents"))
    for pair, row in zip(pairs, scored.rows):
        assert len(row) == 1
        assert row[0] == pytest.approx(torch.sigmoid(_logits(cross_encoder, *pair))[0].item(), abs=1e-5)
    # the pair is read as two segments ([CLS] q [SEP] d [SEP], token types 0 then 1): not one text
    joined = torch.sigmoid(_logits(cross_encoder, "the cat " + TEXTS[0]))[0].item()
    assert abs(scored.rows[0][0] - joined) > 1e-4


def test_many_rows_go_in_chunks_and_match_row_by_row(cross_encoder: ScoringEngine, monkeypatch) -> None:
    monkeypatch.setattr(score_engine, "CHUNK", 3)
    calls = []
    predict = cross_encoder.adapter.predict
    monkeypatch.setattr(cross_encoder.adapter, "predict", lambda rows: calls.append(len(rows)) or predict(rows))
    pairs = [(TEXTS[i % 4], TEXTS[(i * 3 + 1) % 4] + " " + "cat " * i) for i in range(8)]
    scored = cross_encoder.run(_job("score", pairs, model="xenc"))
    assert calls == [3, 3, 2]
    expected = [torch.sigmoid(_logits(cross_encoder, *pair))[0].item() for pair in pairs]
    assert [row[0] for row in scored.rows] == pytest.approx(expected, abs=1e-5)


def test_a_row_too_long_names_its_place(cross_encoder: ScoringEngine) -> None:
    with pytest.raises(ContextLengthExceeded) as err:
        cross_encoder.run(_job("score", [("the cat", "dog"), ("the cat", "cat " * 70)], model="xenc", param="documents"))
    assert "documents[1]" in str(err.value) and "64" in str(err.value)


def test_a_job_holds_rows_of_its_modes_width() -> None:
    with pytest.raises(ValueError):
        _job("score", [("only one",)])
    with pytest.raises(ValueError):
        _job("classify", [("a", "b")])
    assert _job("score", [("a", "b")]).capability == "score"


# -- the task, over fakeredis --------------------------------------------------------------------


def _events(job: ScoreJob, engine: object) -> list:
    client = fakeredis.FakeRedis()
    subscriber = client.pubsub()
    subscriber.subscribe(channel_for(job.request_id))
    subscriber.get_message(timeout=1)  # the subscription's confirmation
    state = SimpleNamespace(redis=client, engines={job.model: engine}, worker_id="w1", outbox=None,
                            settings=WorkerSettings(result_ttl=60))  # fmt: skip
    run_score_job(state, job.model_dump(mode="json"))
    events = []
    while (message := subscriber.get_message(timeout=1)) is not None:
        events.append(decode_event(message["data"]))
    return events


def test_the_task_answers_with_one_scores_event(classifier: ScoringEngine) -> None:
    start, answer = _events(_job("classify", [("the cat",), ("dog",)]), classifier)
    assert isinstance(start, StartEvent) and isinstance(answer, ScoresEvent)
    assert answer.labels == ("negative", "neutral", "positive") and len(answer.rows) == 2
    assert answer.rows == classifier.run(_job("classify", [("the cat",), ("dog",)])).rows
    assert answer.prompt_tokens > 0


def test_the_task_refuses_to_score_with_a_model_of_several_classes(classifier: ScoringEngine) -> None:
    [error] = _events(_job("score", [("the cat", "dog")]), classifier)
    assert isinstance(error, ErrorEvent) and (error.code, error.param) == ("invalid_request", "model")
    assert "does not support score" in error.message


def test_a_text_too_long_is_context_length_exceeded_naming_the_param(cross_encoder: ScoringEngine) -> None:
    job = _job("score", [("the cat", "cat " * 70)], model="xenc", param="documents")
    start, error = _events(job, cross_encoder)
    assert isinstance(error, ErrorEvent) and (error.code, error.param) == ("context_length_exceeded", "documents")
    assert "documents[0]" in error.message


def test_the_task_refuses_a_classify_job_for_a_chat_model() -> None:
    generator = SimpleNamespace(capabilities=("chat", "completions"))
    [error] = _events(_job("classify", [("hi",)], model="chat"), generator)
    assert (error.code, error.param) == ("invalid_request", "model") and "does not support classify" in error.message
