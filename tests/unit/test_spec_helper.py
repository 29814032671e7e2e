"""tests/spec.py itself: OpenAPI 3.0 `nullable` becomes JSON Schema 2020-12, and $refs resolve."""

from __future__ import annotations

import pytest

from tests.spec import _without_nullable, assert_valid, errors_for, schema_names, validator_for


def test_nullable_type_gains_null_and_its_enum_too() -> None:
    schema = {"type": "string", "enum": ["stop", "length"], "nullable": True}
    assert _without_nullable(schema) == {"type": ["string", "null"], "enum": ["stop", "length", None]}


def test_nullable_without_type_becomes_any_of_null() -> None:
    schema = {"$ref": "#/components/schemas/CompletionUsage", "nullable": True}
    assert _without_nullable(schema) == {
        "anyOf": [{"$ref": "#/components/schemas/CompletionUsage"}, {"type": "null"}]
    }


def test_nullable_false_is_dropped_and_nested_schemas_are_converted() -> None:
    schema = {"type": "object", "nullable": False, "properties": {"a": {"type": "integer", "nullable": True}}}
    assert _without_nullable(schema) == {
        "type": "object",
        "properties": {"a": {"type": ["integer", "null"]}},
    }


def test_a_property_called_nullable_is_left_alone() -> None:
    schema = {"type": "object", "properties": {"nullable": {"type": "boolean"}}}
    assert _without_nullable(schema) == schema


def test_refs_resolve_across_the_document() -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": []}
    assert_valid({**chunk, "usage": usage}, "CreateChatCompletionStreamResponse")
    assert_valid({**chunk, "usage": None}, "CreateChatCompletionStreamResponse")  # nullable $ref
    assert errors_for({**chunk, "usage": {"prompt_tokens": "x"}}, "CreateChatCompletionStreamResponse")


def test_assert_valid_lists_the_violation() -> None:
    with pytest.raises(AssertionError, match="at error: 'message' is a required property"):
        assert_valid({"error": {"type": "t", "param": None, "code": None}}, "ErrorResponse")


def test_unknown_schema_name_is_a_key_error() -> None:
    assert "ErrorResponse" in schema_names()
    with pytest.raises(KeyError):
        validator_for("NoSuchSchema")
