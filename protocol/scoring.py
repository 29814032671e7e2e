"""The job of a sequence-classification model: classify texts, or score text pairs (a
cross-encoder: /v1/score and /v1/rerank are both pairs scored), answered by one `ScoresEvent`."""

from __future__ import annotations

import time
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from protocol.base import WireModel
from protocol.cards import Capability
from protocol.names import TASK_SCORE

ScoreMode = Literal["classify", "score"]


class ScoreJob(WireModel):
    """Run one sequence classifier over `texts`: each row is one text ("classify") or a pair
    ("score": the query first, then the document, as a cross-encoder reads them)."""

    TASK: ClassVar[str] = TASK_SCORE

    request_id: str
    model: str
    mode: ScoreMode
    texts: tuple[tuple[str, ...], ...] = Field(min_length=1)
    param: str = Field("input", description="the request's field the rows come from, named in errors "
                       "(input, text_2, documents...)")  # fmt: skip
    expires_at: float = Field(description="unix time after which the work is worthless")

    @model_validator(mode="after")
    def _rows_fit_the_mode(self) -> ScoreJob:
        width = 1 if self.mode == "classify" else 2
        if any(len(row) != width for row in self.texts):
            raise ValueError(f"a {self.mode} job's rows hold {width} text(s) each")
        return self

    @property
    def kept(self) -> bool:
        return False  # answered at once, never replayed from a log

    @property
    def expired(self) -> bool:
        return time.time() > self.expires_at

    @property
    def capability(self) -> Capability:
        return self.mode
