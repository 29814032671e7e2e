"""Fixtures shared by the unit tests: the tiny random model, loaded once per test module, and
engine factories that close every engine they built (each engine runs a thread of its own).

`adapter` is the tiny Llama of tests/tiny_models.py on the CPU in float32.  A module that needs
it loaded otherwise (other options, another model) overrides `adapter` with a fixture of its own;
the engine factories then default to that one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from adapters.hf_causal import HfCausalAdapter


@pytest.fixture(scope="module")
def adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> HfCausalAdapter:
    """Module scope: loading is the slow part, and a module's tests may leave state in it (its
    prefix cache) that other modules should not see."""
    from adapters.hf_causal import HfCausalAdapter
    from protocol.models_file import ModelSpec

    spec = ModelSpec(name="tiny", path=tiny_model_dir, device="cpu", dtype="float32")
    loaded = HfCausalAdapter(spec, tmp_path_factory.mktemp("cache"))
    loaded.load()
    return loaded


class Engines:
    """`engines(adapter=None, cls=BatchEngine, **kwargs)` builds `cls(adapter, **kwargs)`, over
    the module's `adapter` when none is given, and remembers it so that `close_all` stops it."""

    def __init__(self, default_adapter: Callable[[], Any]) -> None:
        self._default_adapter = default_adapter
        self._built: list[Any] = []

    def __call__(self, adapter: Any = None, *, cls: type | None = None, **kwargs: Any) -> Any:
        if cls is None:
            from workers.batch_engine import BatchEngine

            cls = BatchEngine
        engine = cls(self._default_adapter() if adapter is None else adapter, **kwargs)
        self._built.append(engine)
        return engine

    def close_all(self) -> None:
        while self._built:
            self._built.pop().close()


@pytest.fixture
def make_engine(request: pytest.FixtureRequest) -> Iterator[Engines]:
    """Engines for one test, closed when it ends (passed or not)."""
    engines = Engines(lambda: request.getfixturevalue("adapter"))
    yield engines
    engines.close_all()


@pytest.fixture(scope="module")
def make_module_engine(request: pytest.FixtureRequest) -> Iterator[Engines]:
    """Engines a module's tests share (for module-scoped engine fixtures), closed after the module."""
    engines = Engines(lambda: request.getfixturevalue("adapter"))
    yield engines
    engines.close_all()
