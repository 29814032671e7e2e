"""Copy the part of OpenAI's OpenAPI document that the tests use into the repository.

    python scripts/vendor_openai_spec.py [SOURCE]          # write tests/openai/openapi.subset.json
    python scripts/vendor_openai_spec.py [SOURCE] --check  # exit 1 if that file is out of date

SOURCE is the full document (default: ../shared/openai/openapi.json, beside the repository).
The subset holds `openapi`, `info`, the schemas named in ROOT_SCHEMAS under `components/schemas`
together with every schema their `$ref`s reach, and an `x-queuechat-vendored` record of where it
came from (the source's title, version, sha256, and the day it was vendored). The `$ref` layout
(`#/components/schemas/...`) is unchanged, so refs resolve in the subset as in the whole document.

The output is deterministic: sorted keys, fixed indentation, and the vendoring date is kept from the
existing file while the source's sha256 is unchanged, so a rerun on the same source writes the same
bytes. When a test needs another schema, add its name to ROOT_SCHEMAS and rerun the script.

Without the source, `--check` can only check that the vendored file is self-consistent: its root
list matches ROOT_SCHEMAS and every `$ref` in it resolves inside it.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO.parent / "shared" / "openai" / "openapi.json"
OUTPUT = REPO / "tests" / "openai" / "openapi.subset.json"
VENDOR_KEY = "x-queuechat-vendored"
SCHEMA_PREFIX = "#/components/schemas/"

# Every schema name the tests validate against (assert_valid / errors_for / validator_for).
ROOT_SCHEMAS = (
    "ChatCompletionDeleted",
    "ChatCompletionList",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "CreateEmbeddingResponse",
    "DeleteFileResponse",
    "ErrorResponse",
    "ListFilesResponse",
    "ListModelsResponse",
    "Model",
    "OpenAIFile",
    "Response",
    "ResponseItemList",
    "ResponseStreamEvent",
)


def refs_in(node: Any) -> set[str]:
    """Every `$ref` string anywhere inside `node`."""
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str):
                found.add(ref)
            stack.extend(value for key, value in item.items() if key != "$ref")
        elif isinstance(item, list):
            stack.extend(item)
    return found


def schema_closure(schemas: dict[str, Any], roots: tuple[str, ...]) -> dict[str, Any]:
    """The named schemas plus every schema their `$ref`s reach, transitively.

    Raises KeyError for a root or a reference that the document does not define, and ValueError
    for a `$ref` that does not point at `#/components/schemas/...` (the subset keeps nothing else).
    """
    kept: dict[str, Any] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in kept:
            continue
        if name not in schemas:
            raise KeyError(f"{name!r} is not under components/schemas in the source document")
        kept[name] = schemas[name]
        for ref in refs_in(schemas[name]):
            if not ref.startswith(SCHEMA_PREFIX):
                raise ValueError(f"schema {name!r} refers to {ref!r}, outside components/schemas")
            todo.append(ref.removeprefix(SCHEMA_PREFIX))
    return kept


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def vendored_on(source_sha256: str, existing: dict[str, Any] | None) -> str:
    """The existing file's date when it came from the same source bytes, else today (UTC)."""
    record = (existing or {}).get(VENDOR_KEY, {})
    if record.get("source", {}).get("sha256") == source_sha256 and record.get("vendored_on"):
        return record["vendored_on"]
    return datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def build_subset(source_bytes: bytes, existing: dict[str, Any] | None = None) -> dict[str, Any]:
    """The vendored document for a source document given as its raw bytes."""
    document = json.loads(source_bytes)
    digest = sha256_of(source_bytes)
    return {
        "openapi": document["openapi"],
        "info": document["info"],
        "components": {"schemas": schema_closure(document["components"]["schemas"], ROOT_SCHEMAS)},
        VENDOR_KEY: {
            "generator": "scripts/vendor_openai_spec.py",
            "note": "Generated: do not edit. Add schema names to ROOT_SCHEMAS in the generator and rerun it.",
            "root_schemas": sorted(ROOT_SCHEMAS),
            "source": {
                "file": "openai/openapi.json",
                "openapi": document["openapi"],
                "title": document["info"].get("title"),
                "version": document["info"].get("version"),
                "sha256": digest,
                "bytes": len(source_bytes),
            },
            "vendored_on": vendored_on(digest, existing),
        },
    }


def render(subset: dict[str, Any]) -> str:
    """Stable text: sorted keys, one-space indentation, UTF-8 as is, a final newline."""
    return json.dumps(subset, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def read_existing(path: Path) -> dict[str, Any] | None:
    """The vendored document already at `path`, or None when there is none (or it is not JSON)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def self_consistency_problems(subset: dict[str, Any]) -> list[str]:
    """What is wrong with a vendored document on its own: its root list, or refs that dangle."""
    schemas = subset.get("components", {}).get("schemas", {})
    problems = []
    recorded = subset.get(VENDOR_KEY, {}).get("root_schemas")
    if recorded != sorted(ROOT_SCHEMAS):
        problems.append(f"its root_schemas {recorded} differ from ROOT_SCHEMAS {sorted(ROOT_SCHEMAS)}")
    problems += [f"root schema {name!r} is missing" for name in ROOT_SCHEMAS if name not in schemas]
    for ref in sorted(refs_in(schemas)):
        if not ref.startswith(SCHEMA_PREFIX) or ref.removeprefix(SCHEMA_PREFIX) not in schemas:
            problems.append(f"$ref {ref!r} does not resolve inside the subset")
    return problems


def check(source: Path, output: Path) -> int:
    """0 when `output` is what the generator would write now; 1 (with the reason) when it is not."""
    existing_text = output.read_text(encoding="utf-8") if output.exists() else None
    if existing_text is None:
        print(f"{output} does not exist; run scripts/vendor_openai_spec.py", file=sys.stderr)
        return 1
    existing = json.loads(existing_text)
    if not source.exists():
        problems = self_consistency_problems(existing)
        print(f"{source} not found: checked only that {output.name} is self-consistent", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1 if problems else 0
    if render(build_subset(source.read_bytes(), existing)) != existing_text:
        print(f"{output} is out of date with {source}; rerun scripts/vendor_openai_spec.py", file=sys.stderr)
        return 1
    return 0


def write(source: Path, output: Path) -> None:
    """Write the subset of `source` to `output` and say how big it is."""
    text = render(build_subset(source.read_bytes(), read_existing(output)))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    count = len(json.loads(text)["components"]["schemas"])
    print(f"wrote {output} ({len(text.encode())} bytes, {len(ROOT_SCHEMAS)} roots, {count} schemas)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "source", nargs="?", type=Path, default=DEFAULT_SOURCE, help="the full OpenAPI document"
    )
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where the subset goes")
    parser.add_argument("--check", action="store_true", help="exit 1 if the output is out of date")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.source, args.output)
    if not args.source.exists():
        parser.error(f"{args.source} not found: pass the path of OpenAI's openapi.json")
    write(args.source, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
