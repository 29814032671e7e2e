"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tiny_models import make_tiny_model

REPO = Path(__file__).resolve().parent.parent
OPENAI_SPEC = REPO.parent / "shared" / "openai" / "openapi.json"
DEFAULT_MODEL_FILE = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDING_MODEL_DIR = REPO / "models" / "all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-a"), seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-b"), seed=1)


@pytest.fixture(scope="session")
def openai_spec() -> dict:
    return json.loads(OPENAI_SPEC.read_text())
