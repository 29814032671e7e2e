"""Fixtures shared by unit and integration tests, and the guard against reads beside the repository.

tests/outside_reads.py holds the guard: it is installed here, as early as this file is imported, and
its two hooks fail the session (and list the paths) if any test read a file beside the repository.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests import outside_reads
from tests.outside_reads import pytest_sessionfinish, pytest_terminal_summary  # noqa: F401 - pytest hooks
from tests.spec import OPENAI_SPEC
from tests.tiny_models import make_tiny_model

REPO = Path(__file__).resolve().parent.parent
outside_reads.install(REPO)
# tiktoken copies every file it loads (even a local tokenizer.model) into a cache under the system's
# temporary directory and reads it back from there: beside the repository when the checkout itself
# lives in /tmp.  An empty cache directory turns that off (for this process and its children).
os.environ["TIKTOKEN_CACHE_DIR"] = ""
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
    """The vendored subset of OpenAI's OpenAPI document (see tests/spec.py), as parsed JSON."""
    return json.loads(OPENAI_SPEC.read_text(encoding="utf-8"))
