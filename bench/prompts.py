"""The prompts every measurement uses, so baseline and servers answer the same questions."""

_CREATURES = ["dragon", "cat", "robot", "king"]
_SKILLS = ["cook", "sing", "fly", "read"]

PROMPTS = [f"Write a short story about a {c} who learns to {s}." for c in _CREATURES for s in _SKILLS]


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
