"""Layers point down: protocol at the bottom, adapters above it, workers and gateway on top,
the commands (queuechat, bench, scripts) above everything.

Checked twice: statically (every import statement of every first-party module, and the import
graph has no cycle) and in fresh interpreters (what importing each layer really loads).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tiny_models import write_models_file

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "tokenizers", "safetensors", "accelerate", "gguf")
FIRST_PARTY = ("protocol", "adapters", "workers", "gateway", "queuechat", "bench", "scripts")
# Which first-party packages each package may import (itself included).
MAY_IMPORT = {
    "protocol": {"protocol"},
    "adapters": {"adapters", "protocol"},
    "workers": {"workers", "adapters", "protocol"},
    "gateway": {"gateway", "protocol"},
}
# Modules that own a command line: the only ones that may read sys.argv.
COMMANDS = {"queuechat.cli", "gateway.__main__", "bench.__main__", "bench.soak", "bench.memory"}

_REPORT = """
import json, sys, threading
print("MODULES=" + json.dumps(sorted(sys.modules)))
print("THREADS=" + json.dumps([t.name for t in threading.enumerate()]))
"""


# ---- static: import statements ---------------------------------------------------------------


def module_files() -> Iterator[tuple[str, Path]]:
    for package in FIRST_PARTY:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _under_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(module: str, path: Path) -> set[str]:
    """First-party modules that `module` imports anywhere (lazy imports too), except for type checking."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if _under_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    known = {name for name, _ in module_files()}
    return {name for name in found if name in known and name != module}


@pytest.fixture(scope="module")
def import_graph() -> dict[str, set[str]]:
    return {module: imports_of(module, path) for module, path in module_files()}


def test_every_import_points_down(import_graph: dict[str, set[str]]) -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in import_graph.items()
        for target in sorted(targets)
        if module.split(".")[0] in MAY_IMPORT and target.split(".")[0] not in MAY_IMPORT[module.split(".")[0]]
    ]
    assert wrong == []


def test_the_import_graph_has_no_cycle(import_graph: dict[str, set[str]]) -> None:
    # A package's __init__ importing its own submodules is not a cycle worth reporting.
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in import_graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target] if target in path else [*path, target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state:
            cycle = visit(module, [module])
            assert cycle is None, " -> ".join(cycle)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """Guards the two tests above: they do read imports, including lazy ones."""
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from workers.tasks import run_job\n    import gateway.relay\n")
    assert imports_of("adapters.x", source) == {"workers.tasks", "gateway.relay"}


def test_only_commands_read_sys_argv() -> None:
    readers = [module for module, path in module_files() if "sys.argv" in path.read_text()]
    assert set(readers) <= COMMANDS | {m for m in readers if m.startswith("scripts.")}, readers


# ---- dynamic: what importing each layer loads ------------------------------------------------


def run_fresh(code: str, env: dict[str, str] | None = None) -> tuple[set[str], list[str]]:
    """(modules loaded, threads running) in a fresh interpreter after running `code` at the repo root."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code) + _REPORT],
        cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines() if line[:8] in ("MODULES=", "THREADS="))
    return set(json.loads(lines["MODULES"])), json.loads(lines["THREADS"])


def packages(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_importing_the_protocol_starts_nothing() -> None:
    modules, threads = run_fresh(
        "import protocol, protocol.cards, protocol.events, protocol.jobs, protocol.models_file, "
        "protocol.names, protocol.settings"
    )
    assert "protocol.jobs" in modules
    assert packages(modules) & {"celery", "kombu", "redis", "fastapi", "starlette", "uvicorn", *HEAVY} == set()
    assert packages(modules) & set(FIRST_PARTY) == {"protocol"}
    assert threads == ["MainThread"]


def test_adapters_import_only_the_protocol() -> None:
    modules, _ = run_fresh(
        "import adapters, adapters.hf_causal, adapters.chatglm, adapters.embeddings, adapters.echo, adapters.select"
    )
    assert "torch" in packages(modules)  # the adapters really were loaded
    assert packages(modules) & set(FIRST_PARTY) == {"adapters", "protocol"}
    assert packages(modules) & {"celery", "kombu", "redis", "fastapi"} == set()


def test_importing_the_workers_package_builds_no_celery_app() -> None:
    modules, _ = run_fresh("import workers, workers.settings")
    assert packages(modules) & {"celery", "kombu", *HEAVY} == set()


def test_the_celery_app_loads_no_model_code() -> None:
    modules, _ = run_fresh(
        """
        from celery.app.utils import find_app
        app = find_app("workers")  # what `celery -A workers` does
        assert app.main == "queuechat", app
        """
    )
    assert "workers.celery" in modules
    assert packages(modules) & {*HEAVY, "adapters", "gateway"} == set()
    assert "workers.tasks" not in modules


def test_the_checker_sees_model_code_when_it_is_loaded() -> None:
    """Guards the tests here: the same check does flag the worker side, which loads the adapters."""
    modules, _ = run_fresh("import workers.tasks, adapters.hf_causal")
    assert {"torch", "transformers", "adapters"} <= packages(modules)


@pytest.fixture(scope="module")
def gateway_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("boundaries")
    models = write_models_file(folder / "models.yaml", {"tiny": {"adapter": "hf-causal", "path": folder}})
    # The app never talks to Redis below; an unroutable URL makes sure of it.
    return {"QUEUECHAT_MODELS_FILE": str(models), "QUEUECHAT_REDIS_URL": "redis://127.0.0.1:1/0"}


def test_the_gateway_loads_neither_model_code_nor_workers(gateway_env: dict[str, str]) -> None:
    modules, _ = run_fresh(
        """
        import gateway
        from fastapi.testclient import TestClient

        app = gateway.create_app()
        with TestClient(app) as client:  # runs the lifespan: Redis client and Celery client are built
            assert client.get("/v1/nope").status_code == 404
            headers = {"content-type": "application/json"}
            response = client.post("/v1/chat/completions", content=b"{", headers=headers)
            assert response.status_code == 400, response.text
        """,
        gateway_env,
    )
    assert "gateway.app" in modules  # the app really was built
    assert packages(modules) & {*HEAVY, "adapters", "workers"} == set()
