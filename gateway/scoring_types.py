"""Requests and responses of the sequence-classifier endpoints, in vLLM's shapes (its pooling
API: /classify, /score, /rerank; /rerank is also Jina's and Cohere's v1/v2 shape).

Each request becomes one `ScoreJob`: the texts of /v1/classify, or the (query, document) pairs
of /v1/score (one text_1 against every text_2, or text_1[i] against text_2[i]) and /v1/rerank.
Texts are never truncated: a text too long for the model is a 400 naming it (from the worker,
which has the tokenizer).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import InvalidRequest
from gateway.openai_types import _Request
from gateway.settings import GatewaySettings
from protocol import ScoreJob, ScoreMode, ScoresEvent

MAX_SCORE_INPUTS = 2048  # texts to classify, or pairs to score, per request (as /v1/embeddings' inputs)


class _ScoringRequest(_Request):
    """What the three requests share (as every request body: unknown fields ignored, valid Unicode)."""

    model: Annotated[str, Field(min_length=1)]
    user: str | None = None

    def _job(self, prefix: str, mode: ScoreMode, rows: list[tuple[str, ...]], param: str,
             limits: GatewaySettings) -> ScoreJob:  # fmt: skip
        if sum(len(text) for row in rows for text in row) > limits.max_prompt_chars:
            raise InvalidRequest(f"The texts have more than {limits.max_prompt_chars} characters in all.", param=param)
        return ScoreJob(request_id=f"{prefix}-{uuid.uuid4().hex}", model=self.model, mode=mode, texts=tuple(rows),
                        param=param, expires_at=time.time() + limits.queue_timeout)  # fmt: skip


def _texts(value: str | list[str], param: str) -> list[str]:
    """One text or a list of them, checked: at least one, at most MAX_SCORE_INPUTS, none empty."""
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        raise InvalidRequest(f"'{param}' must not be empty.", param=param)
    if len(texts) > MAX_SCORE_INPUTS:
        raise InvalidRequest(f"At most {MAX_SCORE_INPUTS} texts in '{param}' per request.", param=param)
    for i, text in enumerate(texts):
        if not text:
            where = param if isinstance(value, str) else f"{param}[{i}]"
            raise InvalidRequest(f"{where} is empty.", param=param)
    return texts


class ClassificationRequest(_ScoringRequest):
    """POST /v1/classify: each input's class probabilities."""

    input: str | list[str]

    def to_job(self, limits: GatewaySettings) -> ScoreJob:
        rows = [(text,) for text in _texts(self.input, "input")]
        return self._job("classify", "classify", rows, "input", limits)


class ScoreRequest(_ScoringRequest):
    """POST /v1/score: the relevance of text pairs.  `text_1`/`text_2` as vLLM first named them,
    or `queries`/`documents` as it names them now; one of the two spellings."""

    text_1: str | list[str] | None = None
    text_2: str | list[str] | None = None
    queries: str | list[str] | None = None
    documents: str | list[str] | None = None

    def sides(self) -> tuple[tuple[str, list[str]], tuple[str, list[str]]]:
        """((name, texts) of the first side, (name, texts) of the second), checked."""
        newer = self.text_1 is None and self.text_2 is None and (self.queries, self.documents) != (None, None)
        first, second = ("queries", "documents") if newer else ("text_1", "text_2")
        other = {"text_1": ("queries", "documents"), "queries": ("text_1", "text_2")}[first]
        for name in other:
            if getattr(self, name) is not None:
                raise InvalidRequest(f"Give either text_1 and text_2 or queries and documents, not '{name}' as well.",
                                     param=name)  # fmt: skip
        for name in (first, second):
            if getattr(self, name) is None:
                raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name)
        return (first, _texts(getattr(self, first), first)), (second, _texts(getattr(self, second), second))

    def to_job(self, limits: GatewaySettings) -> ScoreJob:
        (_, lefts), (right_name, rights) = self.sides()
        if len(lefts) == 1:
            rows = [(lefts[0], right) for right in rights]
        elif len(lefts) == len(rights):
            rows = list(zip(lefts, rights))
        else:
            raise InvalidRequest(f"{len(lefts)} texts to score against {len(rights)}: give one text to score against "
                                 "many, or as many on each side (paired in order).", param=right_name)  # fmt: skip
        if len(rows) > MAX_SCORE_INPUTS:
            raise InvalidRequest(f"At most {MAX_SCORE_INPUTS} pairs per request.", param=right_name)
        return self._job("score", "score", rows, right_name, limits)


class RerankDocument(BaseModel):
    """A document given as an object (Cohere, Jina): only its text is read."""

    model_config = ConfigDict(extra="ignore")

    text: str


class RerankRequest(_ScoringRequest):
    """POST /v1/rerank (and /rerank, /v2/rerank): the documents ordered by relevance to the query."""

    query: str
    documents: list[str | RerankDocument]
    top_n: int | None = Field(None, ge=1, description="how many of the best to return; default: every document")
    return_documents: bool = Field(True, description="each result carries its document's text (as Jina and vLLM)")

    @property
    def texts(self) -> list[str]:
        return [doc if isinstance(doc, str) else doc.text for doc in self.documents]

    def to_job(self, limits: GatewaySettings) -> ScoreJob:
        query = _texts(self.query, "query")[0]
        rows = [(query, document) for document in _texts(self.texts, "documents")]
        return self._job("rerank", "score", rows, "documents", limits)


# -- responses -------------------------------------------------------------------------------------


class ScoringUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


class ClassificationData(BaseModel):
    index: int
    label: str | None
    probs: list[float]
    num_classes: int


class ClassificationResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[ClassificationData]
    usage: ScoringUsage


class ScoreData(BaseModel):
    index: int
    object: str = "score"
    score: float


class ScoreResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: ScoringUsage


class RerankResultDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankResultDocument | None = None


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    usage: RerankUsage
    results: list[RerankResult]


def classification_body(event: ScoresEvent, job: ScoreJob) -> ClassificationResponse:
    """Each input's probabilities and the likeliest class's name."""
    data = []
    for i, probs in enumerate(event.rows):
        best = max(range(len(probs)), key=probs.__getitem__)
        label = event.labels[best] if best < len(event.labels) else None
        data.append(ClassificationData(index=i, label=label, probs=list(probs), num_classes=len(probs)))
    usage = ScoringUsage(prompt_tokens=event.prompt_tokens, total_tokens=event.prompt_tokens)
    return ClassificationResponse(id=job.request_id, created=int(time.time()), model=job.model, data=data, usage=usage)


def score_body(event: ScoresEvent, job: ScoreJob) -> ScoreResponse:
    data = [ScoreData(index=i, score=row[0]) for i, row in enumerate(event.rows)]
    usage = ScoringUsage(prompt_tokens=event.prompt_tokens, total_tokens=event.prompt_tokens)
    return ScoreResponse(id=job.request_id, created=int(time.time()), model=job.model, data=data, usage=usage)


def rerank_body(event: ScoresEvent, job: ScoreJob, body: RerankRequest) -> RerankResponse:
    """The documents by relevance, best first (ties in input order), the first `top_n` of them."""
    order = sorted(range(len(event.rows)), key=lambda i: (-event.rows[i][0], i))[: body.top_n]
    texts = body.texts
    results = [RerankResult(index=i, relevance_score=event.rows[i][0],
                            document=RerankResultDocument(text=texts[i]) if body.return_documents else None)
               for i in order]  # fmt: skip
    usage = RerankUsage(prompt_tokens=event.prompt_tokens, total_tokens=event.prompt_tokens)
    return RerankResponse(id=job.request_id, model=job.model, usage=usage, results=results)
