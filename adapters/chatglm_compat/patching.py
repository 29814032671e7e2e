"""How a fix is applied: at most once per class, recorded on the class itself (`MARK`,
`__queuechat_compat__`) and logged; plus the source checks several fixes share (which classes are
remote code, what their code calls, what a function accepts)."""

from __future__ import annotations

import ast
import functools
import inspect
import logging
import textwrap
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__package__)  # one logger for the whole compatibility layer

MARK = "__queuechat_compat__"


def _applied(cls: type) -> list[str]:
    """The fixes recorded on `cls` itself (not inherited)."""
    return cls.__dict__.get(MARK, [])


def _record(cls: type, name: str) -> None:
    if MARK not in cls.__dict__:
        setattr(cls, MARK, [])
    cls.__dict__[MARK].append(name)


def _once(fix: Callable[[type], bool]) -> Callable[[type], bool]:
    """A fix applies to a class at most once; returns whether it changed the class (now or before)."""

    @functools.wraps(fix)
    def apply(cls: type, *args: Any) -> bool:
        if fix.__name__ in _applied(cls):
            return True
        changed = fix(cls, *args)
        if changed:
            _record(cls, fix.__name__)
            log.info("chatglm compat: %s on %s.%s", fix.__name__, cls.__module__, cls.__qualname__)
        return changed

    return apply


def _remote_mro(cls: type) -> list[type]:
    return [k for k in cls.__mro__ if not k.__module__.startswith(("transformers.", "builtins"))]


def _accepts(function: Callable, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return True
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _calls(cls: type, name: str) -> bool:
    """Whether the code of `cls` or its remote bases uses or defines `name` (an attribute, a
    variable or a method name; comments and strings do not count; source unknown: yes)."""
    for klass in _remote_mro(cls):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            return True
        for node in ast.walk(tree):
            if (
                (isinstance(node, ast.Attribute) and node.attr == name)
                or (isinstance(node, ast.Name) and node.id == name)
                or (isinstance(node, ast.FunctionDef) and node.name == name)
            ):
                return True
    return False

