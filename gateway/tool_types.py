"""Request types for tool calling and structured output (chat completions), and what they add
to a job: the tools for the prompt, a system instruction for `response_format`, and the grammar
that guarantees it (gateway/structured.py)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway import structured
from protocol import Constraint


class _Open(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionCallIn(_Open):
    name: str
    arguments: str


class ToolCallIn(_Open):
    """A call an earlier assistant message made (sent back in the conversation)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class FunctionDefinition(_Open):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatCompletionTool(_Open):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Open):
    name: str


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchemaFormat(_Open):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def constraint(self, param: str = "response_format") -> Constraint | None:
        """The grammar that holds the output to this format (None for text)."""
        if self.type == "json_object":
            return structured.json_object(param)
        if self.type == "json_schema" and self.json_schema is not None:
            return structured.json_schema(self.json_schema.schema_ or {}, f"{param}.json_schema.schema")
        return None

    def instruction(self) -> str | None:
        """What the model is told (besides the grammar holding it to it: it writes better values
        when it knows what is asked)."""
        if self.type == "json_object":
            return "Respond only with one valid JSON object, and nothing else."
        if self.type == "json_schema" and self.json_schema is not None:
            schema = json.dumps(self.json_schema.schema_ or {}, ensure_ascii=False)
            return f"Respond only with one JSON object that conforms to this JSON schema, and nothing else:\n{schema}"
        return None


def choice_name(choice: ToolChoice | None) -> str | None:
    """The job's tool_choice: auto, required, a function name, or None (tools not offered)."""
    if choice is None:
        return "auto"
    if isinstance(choice, NamedToolChoice):
        return choice.function.name
    return None if choice == "none" else choice
