"""Import boundaries, checked in fresh interpreters: the gateway and the Celery app load no model code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.tiny_models import write_models_file

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "adapters", "tokenizers", "safetensors", "accelerate", "gguf")

_REPORT = """
import json, sys
print("MODULES=" + json.dumps(sorted(sys.modules)))
"""


def loaded_modules(code: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules a fresh interpreter has loaded after running `code` from the repo root."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code) + _REPORT],
        cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("MODULES=")]
    return set(json.loads(line.removeprefix("MODULES=")))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


@pytest.fixture(scope="module")
def gateway_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("boundaries")
    models = write_models_file(folder / "models.yaml", {"tiny": {"adapter": "hf-causal", "path": folder}})
    # The app never talks to Redis below; an unroutable URL makes sure of it.
    return {"QUEUECHAT_MODELS_FILE": str(models), "QUEUECHAT_REDIS_URL": "redis://127.0.0.1:1/0"}


@pytest.fixture(scope="module")
def gateway_modules(gateway_env: dict[str, str]) -> set[str]:
    return loaded_modules(
        """
        import gateway
        from fastapi.testclient import TestClient

        app = gateway.create_app()
        with TestClient(app) as client:  # runs the lifespan: Redis client and Celery app are built
            assert client.get("/v1/nope").status_code == 404
            headers = {"content-type": "application/json"}
            response = client.post("/v1/chat/completions", content=b"{", headers=headers)
            assert response.status_code == 400, response.text
        """,
        gateway_env,
    )


def test_gateway_app_loads_no_model_code(gateway_modules: set[str]) -> None:
    assert "gateway.app" in gateway_modules  # the app really was built
    assert heavy(gateway_modules) == []


def test_gateway_does_not_import_the_worker_tasks(gateway_modules: set[str]) -> None:
    assert "workers.celery_app" in gateway_modules  # it does share the Celery app factory
    assert not {"workers.tasks", "workers.lifecycle", "workers.engine"} & gateway_modules


def test_importing_the_celery_app_loads_no_model_code() -> None:
    modules = loaded_modules(
        """
        import workers
        assert workers.app.main == "queuechat"
        """
    )
    assert "workers.celery_app" in modules
    assert heavy(modules) == []
    assert "workers.tasks" not in modules


def test_the_checker_sees_model_code_when_it_is_loaded() -> None:
    """Guards the tests above: the same check does flag the worker side, which loads the adapters."""
    modules = loaded_modules("import workers.tasks\nimport adapters.hf_causal")
    assert {"torch", "transformers", "adapters"} <= {m.split(".")[0] for m in heavy(modules)}
