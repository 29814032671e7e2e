"""The tests stand alone: nothing under tests/ reads outside the repository.

Two guards: a scan of every file under tests/ for path expressions that leave the repository, and
the runtime guard of tests/outside_reads.py (checked here on its own and in a pytest subprocess).
Then the vendored OpenAPI subset that replaced the sibling copy of OpenAI's document, and its script.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests import outside_reads
from tests.outside_reads import SiblingReads
from tests.spec import OPENAI_SPEC, schema_names, validator_for

REPO = Path(__file__).resolve().parent.parent.parent
TESTS = REPO / "tests"
DOTS = "." * 2  # spelled this way so that this file passes its own scan

# (name, pattern) pairs for expressions that leave the repository, whatever file they are in.
_LEAVING = (
    ("a string starting with a parent step", re.compile(r"""['"]\.\.[/\\]""")),
    ("a parent step joined to a path", re.compile(r"""(?:/\s*|\bjoin\([^)]*|Path\(\s*)(['"])\.\.\1""")),
    ("a parent step inside a path string", re.compile(r"""[/\\]\.\.(?:[/\\]|['"])""")),
    ("the parent-folder name from os", re.compile(r"\bos\.pardir\b")),
    ("the parent of the repository", re.compile(r"\b(?:REPO|ROOT|REPO_ROOT|REPOSITORY)\.parent\b")),
    ("a folder named shared as a path component", re.compile(r"""['"/\\]shared['"/\\]""")),
)
_PARENT_CHAIN = re.compile(r"(?:\.parent\b)+")
_PARENTS_INDEX = re.compile(r"\.parents\[(\d+)\]")
# Data, not code: descriptions copied from OpenAI's document may hold any text.
_NOT_SCANNED = {OPENAI_SPEC.resolve()}


def leaving_expressions(line: str, depth: int) -> list[str]:
    """What on `line` leaves the repository, for a file `depth` folders below the repository root.

    `.parent` steps from the file itself reach the root after `depth` steps, so a chain of more
    (or `.parents[i]` with i >= depth) climbs out of it.
    """
    found = [name for name, pattern in _LEAVING if pattern.search(line)]
    if any(len(chain.group()) // len(".parent") > depth for chain in _PARENT_CHAIN.finditer(line)):
        found.append(f"more than {depth} .parent steps")
    if any(int(index.group(1)) >= depth for index in _PARENTS_INDEX.finditer(line)):
        found.append(f".parents[i] with i >= {depth}")
    return found


def _files_under_tests() -> list[Path]:
    skipped = {"__pycache__", ".pytest_cache"}
    return sorted(
        path
        for path in TESTS.rglob("*")
        if path.is_file() and not skipped & set(path.parts) and path.resolve() not in _NOT_SCANNED
    )


def test_no_file_under_tests_names_a_path_outside_the_repository() -> None:
    problems = []
    for path in _files_under_tests():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        relative = path.relative_to(REPO)
        depth = len(relative.parts)  # tests/x.py: two .parent steps reach the root
        for number, line in enumerate(text.splitlines(), start=1):
            found = leaving_expressions(line, depth)
            problems += [f"{relative}:{number}: {what}: {line.strip()}" for what in found]
    assert not problems, "paths that leave the repository:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "line",
    [
        f'SPEC = Path("{DOTS}/x/openapi.json")',
        f"REPO / 'a' / '{DOTS}' / 'b'",
        f'open("docs/{DOTS}/{DOTS}/x")',
        "os.path.join(HERE, os." + "pardir, 'x')",
        f"os.path.join(HERE, '{DOTS}', 'x')",
        f'Path("{DOTS}")',
        f'"{DOTS}\\x"',
        "REPO" + ".parent / 'x'",
        'REPO / "sha' + 'red" / "x"',
        "Path(__file__).resolve()" + ".parent" * 3 + " / 'x'",
        "Path(__file__).resolve().parents[2]",
    ],
)
def test_the_scan_catches_each_way_out(line: str) -> None:
    assert leaving_expressions(line, depth=2)


@pytest.mark.parametrize(
    "line",
    [
        "REPO = Path(__file__).resolve()" + ".parent" * 2,
        "Path(__file__).resolve().parents[1]",
        "shared = 'The capital of France is Paris.'",
        '"models:\\n  a:\\n    path: ' + DOTS + '/weights/a.gguf\\n"',
        "path.parent.mkdir(parents=True, exist_ok=True)",
        f'names not in (".", "{DOTS}")',  # a bare parent step that is not joined to a path
    ],
)
def test_the_scan_lets_paths_inside_the_repository_through(line: str) -> None:
    assert leaving_expressions(line, depth=2) == []


# The runtime guard, on a layout of its own: <tmp>/work/{repo, sibling, venv, temp}.


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    work = tmp_path / "work"
    for folder in ("repo/tests", "sibling/openai", "venv/lib", "temp"):
        (work / folder).mkdir(parents=True)
    return {"work": work, "repo": work / "repo", "sibling": work / "sibling", "venv": work / "venv"}


def test_guard_flags_a_sibling_and_nothing_inside_or_allowed(layout: dict[str, Path]) -> None:
    guard = SiblingReads(layout["repo"], allowed=[layout["venv"], layout["work"] / "temp"])
    assert guard.is_sibling_read(str(layout["sibling"] / "openai" / "openapi.json"))
    assert guard.is_sibling_read(str(layout["sibling"]))  # listing it counts too
    assert guard.is_sibling_read(str(layout["repo"] / DOTS / "sibling" / "x"))  # normalised
    assert not guard.is_sibling_read(str(layout["repo"] / "tests" / "x.py"))
    assert not guard.is_sibling_read(str(layout["repo"]))
    assert not guard.is_sibling_read(str(layout["work"]))  # the parent itself: import-system listings
    assert not guard.is_sibling_read(str(layout["venv"] / "lib" / "x.py"))
    assert not guard.is_sibling_read(str(layout["work"] / "temp" / "t"))
    assert not guard.is_sibling_read("/elsewhere/entirely")


def test_guard_ignores_siblings_made_after_it_started(layout: dict[str, Path]) -> None:
    guard = SiblingReads(layout["repo"], allowed=[])
    (layout["work"] / "tmpabc").mkdir()  # as tempfile.mkdtemp would, when the repo sits in the temp dir
    assert not guard.is_sibling_read(str(layout["work"] / "tmpabc" / "f"))
    assert guard.is_sibling_read(str(layout["work"] / "temp" / "f"))  # existed before: no longer allowed


def test_guard_counts_every_sibling_when_the_parent_cannot_be_listed(
    layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def unlistable(folder: str) -> list[str]:
        raise PermissionError(folder)

    monkeypatch.setattr(outside_reads.os, "listdir", unlistable)
    guard = SiblingReads(layout["repo"], allowed=[layout["venv"]])
    assert guard.siblings is None
    assert guard.is_sibling_read(str(layout["work"] / "made-later" / "f"))
    assert not guard.is_sibling_read(str(layout["venv"] / "lib"))


def test_guard_never_allows_a_root_that_holds_the_parent(layout: dict[str, Path]) -> None:
    guard = SiblingReads(layout["repo"], allowed=[layout["work"], layout["work"].parent, Path("/")])
    assert guard.allowed == ()
    assert guard.is_sibling_read(str(layout["sibling"] / "x"))


def test_guard_resolves_relative_paths_from_the_current_folder(
    layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = SiblingReads(layout["repo"], allowed=[])
    monkeypatch.chdir(layout["repo"])
    assert guard.is_sibling_read(os.path.join(DOTS, "sibling", "openai", "openapi.json"))
    assert not guard.is_sibling_read(os.path.join("tests", "x.py"))


def test_guard_audit_records_watched_events_only_and_never_raises(layout: dict[str, Path]) -> None:
    guard = SiblingReads(layout["repo"], allowed=[])
    target = layout["sibling"] / "openai" / "openapi.json"
    guard.audit("open", (str(target), "r", 0))
    guard.audit("os.scandir", (os.fsencode(layout["sibling"]),))
    guard.audit("os.listdir", (3,))  # a file descriptor: nothing to say
    guard.audit("open", (object(), "r", 0))  # not a path: ignored, not raised
    guard.audit("exec", (str(target),))
    assert guard.report() == [f"{layout['sibling']} (os.scandir)", f"{target} (open)"]
    assert guard.report([layout["sibling"] / "openai"]) == [f"{layout['sibling']} (os.scandir)"]


def test_this_session_runs_under_the_guard() -> None:
    """tests/conftest.py installed the guard, and a real open() reaches it. The probe names a sibling
    that does not exist (the open fails) and is taken back out, so this session does not fail."""
    guard = outside_reads.installed()
    assert guard is not None and guard.repo == str(REPO)
    probe = os.path.join(guard.parent, "queuechat-guard-probe", "x")
    siblings, found = guard.siblings, dict(guard.found)
    guard.siblings = siblings | {"queuechat-guard-probe"}
    try:
        with pytest.raises(OSError):
            open(probe).close()  # noqa: SIM115 - only the audit event matters
        reached = probe in guard.found
    finally:
        guard.siblings, guard.found = siblings, found
    assert reached


# The runtime guard end to end: a pytest session in a subprocess, in a layout with a sibling.

_SUBPROCESS_CONFTEST = """\
from tests import outside_reads
from tests.outside_reads import pytest_sessionfinish, pytest_terminal_summary  # noqa: F401
outside_reads.install()
"""
_SUBPROCESS_TEST = """\
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_reads_inside_and_in_temp_folders(tmp_path):
    (tmp_path / "a").write_text("x")
    assert (tmp_path / "a").read_text() == "x"
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "b").write_text("y")
        assert (Path(folder) / "b").read_text() == "y"
    assert (REPO / "pytest.ini").read_text()
"""
_SIBLING_READ = """

def test_reads_a_sibling():
    assert (REPO / "{dots}" / "sibling" / "secret.txt").read_text() == "s"
""".format(dots=DOTS)


def _run_session(tmp_path: Path, read_sibling: bool) -> subprocess.CompletedProcess:
    work = tmp_path / "work"
    (work / "sibling").mkdir(parents=True)
    (work / "sibling" / "secret.txt").write_text("s")
    tests = work / "repo" / "tests"
    tests.mkdir(parents=True)
    (work / "repo" / "pytest.ini").write_text("[pytest]\n")
    (tests / "__init__.py").write_text("")
    (tests / "outside_reads.py").write_text((TESTS / "outside_reads.py").read_text())
    (tests / "conftest.py").write_text(_SUBPROCESS_CONFTEST)
    (tests / "test_reads.py").write_text(_SUBPROCESS_TEST + (_SIBLING_READ if read_sibling else ""))
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    options = ["-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'bt'}", "tests"]
    command = [sys.executable, "-m", "pytest", *options]
    return subprocess.run(command, cwd=work / "repo", env=env, capture_output=True, text=True, timeout=120)


def test_a_session_that_reads_a_sibling_fails_and_names_the_path(tmp_path: Path) -> None:
    result = _run_session(tmp_path, read_sibling=True)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout + result.stderr
    assert "2 passed" in result.stdout, result.stdout
    assert "reads outside the repository" in result.stdout
    assert f"{tmp_path / 'work' / 'sibling' / 'secret.txt'} (open)" in result.stdout, result.stdout


def test_a_session_that_reads_only_inside_and_temp_folders_passes(tmp_path: Path) -> None:
    result = _run_session(tmp_path, read_sibling=False)
    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr
    assert "reads outside the repository" not in result.stdout


# The vendored OpenAPI subset.


def _vendor_script() -> ModuleType:
    path = REPO / "scripts" / "vendor_openai_spec.py"
    spec = importlib.util.spec_from_file_location("vendor_openai_spec", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vendored_subset_lives_in_the_repository_and_is_complete() -> None:
    script = _vendor_script()
    assert OPENAI_SPEC.resolve().is_relative_to(REPO) and OPENAI_SPEC == script.OUTPUT
    subset = json.loads(OPENAI_SPEC.read_text(encoding="utf-8"))
    assert script.self_consistency_problems(subset) == []
    assert set(schema_names()) == set(subset["components"]["schemas"]) >= set(script.ROOT_SCHEMAS)
    source = subset["x-queuechat-vendored"]["source"]
    assert re.fullmatch(r"[0-9a-f]{64}", source["sha256"]) and source["version"] == subset["info"]["version"]


def test_a_schema_outside_the_subset_says_how_to_add_it() -> None:
    with pytest.raises(KeyError, match="add it to ROOT_SCHEMAS in scripts/vendor_openai_spec.py and rerun"):
        validator_for("CreateChatCompletionRequest")


_FAKE_SOURCE = {
    "openapi": "3.1.0",
    "info": {"title": "Fake", "version": "9"},
    "paths": {"/x": {}},
    "components": {
        "schemas": {
            "Root": {"properties": {"a": {"$ref": "#/components/schemas/A"}}},
            "A": {"items": {"anyOf": [{"$ref": "#/components/schemas/B"}]}},
            "B": {"type": "string"},
            "Unused": {"$ref": "#/components/schemas/B"},
        }
    },
}


def test_the_script_keeps_the_closure_and_rewrites_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = _vendor_script()
    monkeypatch.setattr(script, "ROOT_SCHEMAS", ("Root",))
    source, output = tmp_path / "openapi.json", tmp_path / "out" / "subset.json"
    source.write_text(json.dumps(_FAKE_SOURCE))
    assert script.main([str(source), "--output", str(output)]) == 0
    first = output.read_bytes()
    subset = json.loads(first)
    assert sorted(subset["components"]["schemas"]) == ["A", "B", "Root"] and "paths" not in subset
    assert script.main([str(source), "--output", str(output)]) == 0 and output.read_bytes() == first
    assert script.main([str(source), "--output", str(output), "--check"]) == 0
    output.write_bytes(first.replace(b'"string"', b'"integer"'))
    assert script.main([str(source), "--output", str(output), "--check"]) == 1
