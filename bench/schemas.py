"""Twenty JSON schemas of the kinds extraction users send (nested objects, arrays, enums, required
fields, bounded numbers, anyOf), each with a prompt that asks for it: the structured-output tests
and the constraint-cost bench share them."""

from __future__ import annotations

from typing import Any

_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_BOOL = {"type": "boolean"}


def _obj(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """An object schema; every property required unless `required` says otherwise."""
    return {"type": "object", "properties": properties, "required": list(properties) if required is None else required,
            "additionalProperties": False, **extra}  # fmt: skip


# (name, schema, what the user asks for)
SCHEMAS: list[tuple[str, dict[str, Any], str]] = [
    ("person", _obj({"name": _STR, "age": {"type": "integer", "minimum": 0, "maximum": 150}}),
     "Alice is 31 years old. Extract the person."),
    ("city", _obj({"city": _STR, "country": _STR, "population": {"type": "integer", "minimum": 0}}),
     "Paris is the capital of France and has about 2 million inhabitants. Describe the city."),
    ("sentiment", _obj({"sentiment": {"enum": ["positive", "negative", "neutral"]},
                        "confidence": {"type": "number", "minimum": 0, "maximum": 1}}),
     "Classify the sentiment of: 'I love this phone, the battery lasts forever.'"),
    ("tags", _obj({"tags": {"type": "array", "items": _STR, "minItems": 1, "maxItems": 5}}),
     "Give tags for an article about training neural networks on GPUs."),
    ("address", _obj({"street": _STR, "number": {"type": "integer", "minimum": 1},
                      "zip": {"type": "string", "pattern": "^[0-9]{5}$"}, "city": _STR}),
     "Parse the address: 12 Rue de Rivoli, 75004 Paris."),
    ("order", _obj({"order_id": _STR, "items": {"type": "array", "items": _obj(
        {"product": _STR, "quantity": {"type": "integer", "minimum": 1, "maximum": 100},
         "unit_price": {"type": "number", "minimum": 0}}), "minItems": 1},
        "paid": _BOOL}),
     "Order A-17: two notebooks at 3.50 each and one pen at 1.20, already paid. Extract the order."),
    ("event", _obj({"title": _STR, "date": {"type": "string", "format": "date"},
                    "attendees": {"type": "array", "items": _STR}}),
     "Team meeting on 2026-03-14 with Bob and Carol. Extract the event."),
    ("weather", _obj({"location": _STR, "unit": {"enum": ["celsius", "fahrenheit"]},
                      "temperature": {"type": "number", "minimum": -90, "maximum": 60}}),
     "It is 21 degrees Celsius in Madrid. Report the weather."),
    ("book", _obj({"title": _STR, "author": _obj({"first_name": _STR, "last_name": _STR}),
                   "year": {"type": "integer", "minimum": 1400, "maximum": 2100},
                   "genres": {"type": "array", "items": {"enum": ["fiction", "science", "history", "poetry"]}}}),
     "1984 by George Orwell, published in 1949, is a dystopian novel. Describe the book."),
    ("contact", _obj({"name": _STR, "email": _STR, "phone": {"anyOf": [_STR, {"type": "null"}]}}),
     "Contact: Dana Smith, dana@example.com, no phone number. Extract the contact."),
    ("shape", {"anyOf": [_obj({"kind": {"const": "circle"}, "radius": {"type": "number", "minimum": 0}}),
                         _obj({"kind": {"const": "rectangle"}, "width": {"type": "number", "minimum": 0},
                               "height": {"type": "number", "minimum": 0}})]},
     "A rectangle 3 wide and 4 high. Describe the shape."),
    ("answer", _obj({"answer": _INT, "reasoning": {"type": "string", "maxLength": 200}}),
     "What is 12 plus 30? Answer with reasoning."),
    ("yes_no", _obj({"answer": _BOOL}), "Is the sky blue on a clear day?"),
    ("matrix", _obj({"rows": {"type": "array", "minItems": 2, "maxItems": 2,
                              "items": {"type": "array", "items": _INT, "minItems": 2, "maxItems": 2}}}),
     "Write the 2x2 identity matrix."),
    ("recipe", _obj({"name": _STR, "servings": {"type": "integer", "minimum": 1, "maximum": 12},
                     "ingredients": {"type": "array", "items": _obj({"item": _STR, "grams": {"type": "number",
                                                                     "exclusiveMinimum": 0}}), "minItems": 1},
                     "vegetarian": _BOOL}),
     "A pancake recipe for 4: 200 g flour, 300 g milk, 100 g eggs. Give the recipe."),
    ("optional_fields", _obj({"id": _INT, "nickname": _STR, "score": {"type": "number", "minimum": 0, "maximum": 10}},
                             required=["id"]),
     "User 7, called Sparky, scored 8.5. Extract the user."),
    ("priority", _obj({"task": _STR, "priority": {"enum": [1, 2, 3]}, "done": _BOOL}),
     "Task: fix the login bug, highest priority (1), not done yet."),
    ("coordinates", _obj({"lat": {"type": "number", "minimum": -90, "maximum": 90},
                          "lon": {"type": "number", "minimum": -180, "maximum": 180}}),
     "Where is the Eiffel Tower? Give latitude and longitude."),
    ("mixed_list", _obj({"values": {"type": "array", "items": {"anyOf": [_INT, _STR]}, "maxItems": 6}}),
     "List the values: 1, two, 3, four."),
    ("company", _obj({"name": _STR, "employees": {"type": "array", "maxItems": 3, "items": _obj(
        {"name": _STR, "role": {"enum": ["engineer", "manager", "designer"]},
         "salary": {"type": "integer", "minimum": 0, "maximum": 1000000}})},
        "headquarters": _obj({"city": _STR, "country": _STR})}),
     "Acme, based in Berlin, Germany, employs Eve (engineer, 70000) and Finn (manager, 90000). Describe it."),
]
