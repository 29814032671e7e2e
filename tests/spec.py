"""Validate JSON bodies against the schemas of OpenAI's OpenAPI document.

    from tests.spec import assert_valid
    assert_valid(body, "CreateChatCompletionResponse")

The schemas come from tests/openai/openapi.subset.json, a subset of OpenAI's document kept in the
repository so the tests need nothing outside it. scripts/vendor_openai_spec.py writes it: the
schemas named in its ROOT_SCHEMAS plus every schema their `$ref`s reach, with the source's version
and sha256 under `x-queuechat-vendored`. A test that needs another schema gets a KeyError saying so:
add the name to ROOT_SCHEMAS and rerun the script.

The document says OpenAPI 3.1 (JSON Schema 2020-12) but still carries 3.0-style
`"nullable": true` in places; `_without_nullable` rewrites those into 2020-12 before validating:
`{"type": X, "nullable": true}` becomes `{"type": [X, "null"]}` (and an `enum` gains `null`); a
nullable schema without `type` (a bare `$ref`, a `oneOf`...) becomes `{"anyOf": [schema, {"type": "null"}]}`.
`$ref`s ("#/components/schemas/...") resolve against the whole vendored document, laid out as the original.
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

OPENAI_SPEC = Path(__file__).resolve().parent / "openai" / "openapi.subset.json"
VENDOR_SCRIPT = "scripts/vendor_openai_spec.py"
_DOC_URI = "urn:queuechat:openai-openapi"
_COMPOSITION = ("$ref", "allOf", "anyOf", "oneOf", "not")
# Keywords whose value is a mapping from names to schemas: its keys are not keywords.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "schemas")


def _without_nullable(node: Any, names: bool = False) -> Any:
    """A copy of `node` with OpenAPI 3.0 `nullable` turned into JSON Schema 2020-12.

    `names` is true when `node` maps names to schemas (e.g. a `properties` object), so a
    property that happens to be called "nullable" is left alone.
    """
    if isinstance(node, list):
        return [_without_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        key: _without_nullable(value, names=not names and key in _SCHEMA_MAPS) for key, value in node.items()
    }
    if names or "nullable" not in out:
        return out
    if out.pop("nullable") is not True:
        return out
    if "type" in out and not any(k in out for k in _COMPOSITION):
        kind = out["type"]
        kinds = list(kind) if isinstance(kind, list) else [kind]
        out["type"] = kinds if "null" in kinds else [*kinds, "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        return out
    return {"anyOf": [out, {"type": "null"}]}


@lru_cache(maxsize=1)
def _registry() -> Registry:
    document = _without_nullable(json.loads(OPENAI_SPEC.read_text(encoding="utf-8")))
    return Registry().with_resource(
        _DOC_URI, Resource.from_contents(document, default_specification=DRAFT202012)
    )


def schema_names() -> list[str]:
    """Every name under components/schemas in the vendored subset."""
    return sorted(_registry().contents(_DOC_URI)["components"]["schemas"])


@cache
def validator_for(schema_name: str) -> Draft202012Validator:
    """A validator for `#/components/schemas/<schema_name>`, with the whole document for its $refs."""
    if schema_name not in _registry().contents(_DOC_URI)["components"]["schemas"]:
        raise KeyError(
            f"{schema_name!r} is not in the vendored subset {OPENAI_SPEC.name}: add it to ROOT_SCHEMAS in "
            f"{VENDOR_SCRIPT} and rerun `python {VENDOR_SCRIPT}` (it needs OpenAI's full openapi.json)"
        )
    return Draft202012Validator(
        {"$ref": f"{_DOC_URI}#/components/schemas/{schema_name}"}, registry=_registry()
    )


def errors_for(instance: Any, schema_name: str) -> list[str]:
    """Readable descriptions of every way `instance` breaks the schema; empty when it is valid."""
    errors = sorted(validator_for(schema_name).iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"at {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def assert_valid(instance: Any, schema_name: str) -> None:
    """Fail with every violation listed unless `instance` validates against `schema_name`."""
    errors = errors_for(instance, schema_name)
    if errors:
        shown = json.dumps(instance, ensure_ascii=False)[:2000]
        raise AssertionError(f"not a valid {schema_name}:\n  " + "\n  ".join(errors) + f"\ninstance: {shown}")
