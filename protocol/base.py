"""The base of every wire model: immutable, and unknown fields are an error."""

from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
