"""Structured outputs: what a request asks its output to match, as one grammar.

Every way users ask becomes one `Constraint` here, validated by the library the worker compiles
it with (llguidance), so a bad schema or grammar is a 400 naming its parameter before anything
is queued:
- `response_format` json_schema / json_object (chat; completions, as vLLM; Responses' text.format);
- `tool_choice` "required" or a named function: a `<tool_call>` block calling an offered tool
  with arguments valid against its parameters (one call; several when parallel_tool_calls is true);
- vLLM's extensions: `structured_outputs` {json, regex, choice, grammar, json_object} and the
  older `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`.

JSON comes out in one style, `{"a": 1, "b": [2, 3]}` (", " and ": ", no other whitespace), so a
small model cannot spend its tokens on blank lines.  Grammars are Lark (llguidance's dialect, which
embeds JSON schemas with `%json {...}`), or GBNF (`::=`), converted to Lark.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance
from llguidance.gbnf_to_lark import GbnfToLarkError, any_to_lark
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import InvalidRequest
from protocol import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, Constraint

JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
MAX_GRAMMAR_CHARS = 200_000  # a schema or grammar longer than this is refused (compiling it is work)
_MATCHER = llguidance.LLMatcher


def _checked(grammar: str, kind: str, param: str, culprit: str | None = None) -> Constraint:
    """The constraint `param` asked for, once llguidance accepts its grammar; else a 400 naming
    `culprit` (what is wrong in it; `param` itself unless said)."""
    culprit = culprit or param
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise InvalidRequest(f"'{culprit}' is too large ({len(grammar)} characters; at most {MAX_GRAMMAR_CHARS}).",
                             param=culprit)  # fmt: skip
    problem = _MATCHER.validate_grammar(grammar)
    if problem:
        raise InvalidRequest(f"Invalid {kind.replace('_', ' ')} in '{culprit}': {_first_lines(problem)}", param=culprit)
    return Constraint(grammar=grammar, kind=kind, param=param)


def _first_lines(text: str, limit: int = 600) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _schema_of(value: Any, param: str) -> dict[str, Any] | bool:
    """A JSON schema given as an object, or as JSON text (vLLM accepts both)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise InvalidRequest(f"'{param}' is not valid JSON: {exc}", param=param) from None
    if not isinstance(value, dict | bool):
        raise InvalidRequest(f"'{param}' must be a JSON schema (an object).", param=param)
    return value


def _styled(schema: dict[str, Any] | bool) -> dict[str, Any]:
    schema = {} if schema is True else {"not": {}} if schema is False else schema
    return {**schema, "x-guidance": {**JSON_STYLE, **schema.get("x-guidance", {})}}


def json_schema(schema: Any, param: str) -> Constraint:
    """Output that is one JSON value valid against `schema`."""
    styled = _styled(_schema_of(schema, param))
    try:
        grammar = _MATCHER.grammar_from_json_schema(json.dumps(styled, ensure_ascii=False))
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"Invalid JSON schema in '{param}': {exc}", param=param) from None
    return _checked(grammar, "json_schema", param)


def json_object(param: str) -> Constraint:
    """Output that is one JSON object, any keys."""
    return json_schema({"type": "object"}, param)


def regex(pattern: str, param: str) -> Constraint:
    try:
        grammar = _MATCHER.grammar_from_regex(pattern)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"Invalid regular expression in '{param}': {exc}", param=param) from None
    return _checked(grammar, "regex", param)


def choice(options: list[str], param: str) -> Constraint:
    """Output that is exactly one of `options`."""
    if not options:
        raise InvalidRequest(f"'{param}' needs at least one choice.", param=param)
    return lark("start: " + " | ".join(json.dumps(o, ensure_ascii=False) for o in options), param, kind="choice")


def lark(text: str, param: str, kind: str = "grammar") -> Constraint:
    """A grammar in Lark (llguidance's dialect) or GBNF (llama.cpp's, recognised and converted)."""
    try:
        grammar = _MATCHER.grammar_from_lark(any_to_lark(text))
    except (ValueError, TypeError, RuntimeError, GbnfToLarkError) as exc:
        raise InvalidRequest(f"Invalid grammar in '{param}': {_first_lines(str(exc))}", param=param) from None
    return _checked(grammar, kind, param)


def tool_call(functions: list[dict[str, Any]], name: str | None, parallel: bool, param: str = "tool_choice") -> Constraint:
    """A reply that is a `<tool_call>` block (several, one per line, when `parallel`) calling
    `name`, or any of `functions` when None, with arguments valid against its parameters."""
    calls = [_call_schema(f) for f in functions if name is None or f["name"] == name]
    body = json.dumps(_styled(calls[0] if len(calls) == 1 else {"anyOf": calls}), ensure_ascii=False)
    start = "start: call" + (' ("\\n" call)*' if parallel else "")
    block = f"call: {json.dumps(TOOL_CALL_OPEN + chr(10))} body {json.dumps(chr(10) + TOOL_CALL_CLOSE)}"
    try:
        grammar = _MATCHER.grammar_from_lark(f"{start}\n{block}\nbody: %json {body}")
    except (ValueError, TypeError, RuntimeError) as exc:
        raise InvalidRequest(f"Invalid parameters schema in 'tools': {_first_lines(str(exc))}", param="tools") from None
    return _checked(grammar, "tool_call", param, culprit="tools")


def forced_call(functions: list[dict[str, Any]], choice: str | None, parallel: bool | None) -> Constraint | None:
    """The grammar of a tool_choice ("required", or a function's name) over the offered
    `functions`; None when the model may answer freely ("auto") or no tools are offered (None)."""
    if choice is None or choice == "auto":
        return None
    return tool_call(functions, None if choice == "required" else choice, parallel is True)


def _call_schema(function: dict[str, Any]) -> dict[str, Any]:
    parameters = function.get("parameters") or {"type": "object"}
    return {"type": "object", "properties": {"name": {"const": function["name"]}, "arguments": parameters},
            "required": ["name", "arguments"], "additionalProperties": False}  # fmt: skip


class StructuredOutputsParams(BaseModel):
    """vLLM's `structured_outputs` field: exactly one of these."""

    model_config = ConfigDict(extra="forbid")

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool | None = None  # JSON here never has free whitespace


class StructuredFields(BaseModel):
    """The request fields that ask for structured output (vLLM's extensions), on chat and completions."""

    structured_outputs: StructuredOutputsParams | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None
    guided_whitespace_pattern: str | None = None

    @property
    def compiles_grammar(self) -> bool:
        """Whether building this request's jobs compiles a grammar (milliseconds, up to ~0.1 s for
        a schema of 150 KB): the routes then build them off the event loop."""
        fields = ("structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar")
        if any(getattr(self, name) is not None for name in fields):
            return True
        fmt, choice = getattr(self, "response_format", None), getattr(self, "tool_choice", None)
        return (fmt is not None and fmt.type != "text") or (choice is not None and choice not in ("auto", "none"))

    def extension_constraint(self) -> Constraint | None:
        """The constraint the vLLM extension fields ask for (at most one of them)."""
        if self.guided_decoding_backend not in (None, "auto", "guidance", "llguidance"):
            raise InvalidRequest("'guided_decoding_backend' may only be 'guidance' on this server (llguidance).",
                                 param="guided_decoding_backend")  # fmt: skip
        if self.guided_whitespace_pattern is not None:
            raise InvalidRequest("'guided_whitespace_pattern' is not supported: JSON is written without free whitespace.",
                                 param="guided_whitespace_pattern")  # fmt: skip
        asked: list[tuple[str, Any]] = [(f"guided_{k}", getattr(self, f"guided_{k}"))
                                        for k in ("json", "regex", "choice", "grammar")]  # fmt: skip
        so = self.structured_outputs
        if so is not None:
            asked += [("structured_outputs.json", so.json_), ("structured_outputs.regex", so.regex),
                      ("structured_outputs.choice", so.choice), ("structured_outputs.grammar", so.grammar),
                      ("structured_outputs.json_object", so.json_object or None)]  # fmt: skip
        given = [(name, value) for name, value in asked if value is not None]
        if len(given) > 1:
            names = ", ".join(f"'{n}'" for n, _ in given)
            raise InvalidRequest(f"Ask for one structured output at a time (got {names}).", param=given[1][0])
        if not given:
            if so is not None:
                raise InvalidRequest("'structured_outputs' needs one of json, regex, choice, grammar, json_object.",
                                     param="structured_outputs")  # fmt: skip
            return None
        name, value = given[0]
        kind = name.rsplit(".", 1)[-1].removeprefix("guided_")
        if kind == "json":
            return json_schema(value, name)
        if kind == "json_object":
            return json_object(name)
        if kind == "regex":
            return regex(value, name)
        if kind == "choice":
            return choice(value, name)
        return lark(value, name)


def only_one(*constraints: Constraint | None) -> Constraint | None:
    """The one constraint a request asks for; 400 when it asks for two (say response_format and
    guided_json, or a forced tool call and a JSON schema)."""
    given = [c for c in constraints if c is not None]
    if len(given) > 1:
        raise InvalidRequest(f"'{given[0].param}' and '{given[1].param}' both constrain the output; use one.",
                             param=given[1].param)  # fmt: skip
    return given[0] if given else None
