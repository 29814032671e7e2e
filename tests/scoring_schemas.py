"""Validate the bodies of /v1/classify, /v1/score and /v1/rerank against tests/schemas/scoring.schema.json
(the OpenAI spec has no such endpoints; that file documents vLLM's shapes, which they follow).

    from tests.scoring_schemas import assert_scoring_valid
    assert_scoring_valid(body, "RerankResponse")
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCORING_SCHEMAS = Path(__file__).resolve().parent / "schemas" / "scoring.schema.json"


@cache
def _document() -> dict[str, Any]:
    document = json.loads(SCORING_SCHEMAS.read_text())
    Draft202012Validator.check_schema(document)
    return document


def assert_scoring_valid(body: Any, name: str) -> None:
    """Raise jsonschema.ValidationError when `body` does not match the schema `name` ($defs)."""
    document = _document()
    if name not in document["$defs"]:
        raise KeyError(f"{name} is not in {SCORING_SCHEMAS.name}; known: {', '.join(document['$defs'])}")
    schema = {**document, "$ref": f"#/$defs/{name}"}
    Draft202012Validator(schema).validate(body)
