"""The models file: YAML or TOML, paths relative to the file, strict validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.models_file import ModelsFileError, load_models_file

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_yaml_file_parses_with_defaults(tmp_path: Path) -> None:
    models = load_models_file(write(tmp_path / "models.yaml", "models:\n  tiny:\n    path: weights/tiny\n"))
    assert models.names == ["tiny"]
    spec = models.get("tiny")
    assert spec.name == "tiny"
    fields = (spec.adapter, spec.dtype, spec.device, spec.max_context, spec.trust_remote_code, spec.owned_by)
    assert fields == ("auto", "auto", "auto", None, False, "queuechat")


def test_toml_file_parses_every_field(tmp_path: Path) -> None:
    text = """
[models.small-one]
adapter = "hf-causal"
path = "/abs/model.gguf"
dtype = "float16"
device = "cuda:1"
max_context = 1024
trust_remote_code = true
owned_by = "someone"

[models."other.v2"]
path = "x"
"""
    models = load_models_file(write(tmp_path / "models.toml", text))
    assert models.names == ["small-one", "other.v2"]
    spec = models.get("small-one")
    assert spec.path == Path("/abs/model.gguf")
    assert (spec.dtype, spec.device, spec.max_context, spec.trust_remote_code, spec.owned_by) == (
        "float16", "cuda:1", 1024, True, "someone",
    )  # fmt: skip


def test_yaml_and_toml_give_the_same_models(tmp_path: Path) -> None:
    yaml_file = write(tmp_path / "m.yaml", "models:\n  a:\n    path: w\n    max_context: 64\n")
    toml_file = write(tmp_path / "m.toml", '[models.a]\npath = "w"\nmax_context = 64\n')
    assert load_models_file(yaml_file) == load_models_file(toml_file)


def test_relative_paths_resolve_against_the_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "config" / "deep"
    models_file = write(
        folder / "models.yaml", "models:\n  a:\n    path: ../weights/a.gguf\n  b:\n    path: b\n"
    )
    monkeypatch.chdir(tmp_path)  # not the file's folder
    models = load_models_file(Path("config/deep/models.yaml"))
    assert models.get("a").path == (tmp_path / "config" / "weights" / "a.gguf").resolve()
    assert models.get("b").path == (folder / "b").resolve()
    assert models.get("a").path.is_absolute()
    assert load_models_file(models_file) == models


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    models = load_models_file(write(tmp_path / "models.yaml", "models:\n  a:\n    path: /opt/models/a\n"))
    assert models.get("a").path == Path("/opt/models/a")


def test_unknown_model_name_gets_none(tmp_path: Path) -> None:
    assert load_models_file(write(tmp_path / "models.yaml", "models:\n  a:\n    path: p\n")).get("b") is None


@pytest.mark.parametrize(
    "name", ["-leading-dash", "has space", "slash/name", "x" * 129, "émoji😀", ".hidden"]
)
def test_invalid_model_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ModelsFileError):
        load_models_file(write(tmp_path / "models.yaml", f'models:\n  "{name}":\n    path: p\n'))


@pytest.mark.parametrize("name", ["a", "SmolLM2-135M", "qwen2.5_7b", "x" * 128, "0"])
def test_valid_model_names_are_accepted(tmp_path: Path, name: str) -> None:
    assert load_models_file(
        write(tmp_path / "models.yaml", f'models:\n  "{name}":\n    path: p\n')
    ).names == [name]


@pytest.mark.parametrize(
    "entry",
    [
        "path: p\n    colour: blue",  # unknown key
        "adapter: hf-causal",  # no path
        "path: p\n    dtype: float64",
        "path: p\n    max_context: 8",
        "path: p\n    max_context: lots",
    ],
)
def test_invalid_entry_is_refused(tmp_path: Path, entry: str) -> None:
    with pytest.raises(ModelsFileError):
        load_models_file(write(tmp_path / "models.yaml", f"models:\n  a:\n    {entry}\n"))


@pytest.mark.parametrize(
    "text",
    [
        "",  # empty file
        "servers:\n  a:\n    path: p\n",  # no 'models'
        "models:\n  - a\n  - b\n",  # a list, not a mapping
        "models: 3\n",
        "- models\n",
    ],
)
def test_file_without_a_models_mapping_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ModelsFileError):
        load_models_file(write(tmp_path / "models.yaml", text))


def test_unknown_top_level_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelsFileError):
        load_models_file(write(tmp_path / "models.yaml", "models:\n  a:\n    path: p\nmodel_defaults: {}\n"))


@pytest.mark.parametrize("entry", ["just-a-path", "[1, 2]", "5"])
def test_entry_that_is_not_a_mapping_is_refused(tmp_path: Path, entry: str) -> None:
    with pytest.raises(ModelsFileError):
        load_models_file(write(tmp_path / "models.yaml", f"models:\n  a: {entry}\n"))


@pytest.mark.parametrize("value", ["[a, b]", "5"])
def test_path_that_is_not_a_string_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ModelsFileError):
        load_models_file(write(tmp_path / "models.yaml", f"models:\n  a:\n    path: {value}\n"))


def test_invalid_yaml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelsFileError, match="not valid"):
        load_models_file(write(tmp_path / "models.yaml", "models: [unclosed\n"))


def test_invalid_toml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelsFileError, match="not valid"):
        load_models_file(write(tmp_path / "models.toml", "[models.a\npath = 'p'\n"))


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelsFileError, match="cannot read"):
        load_models_file(tmp_path / "nope.yaml")


def test_models_file_error_is_a_value_error() -> None:
    assert issubclass(ModelsFileError, ValueError)


def test_repo_models_file_names_smollm2() -> None:
    models = load_models_file(REPO / "models.yaml")
    assert "smollm2-135m" in models.names
    spec = models.get("smollm2-135m")
    assert spec.adapter == "hf-causal"
    assert spec.path == REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
