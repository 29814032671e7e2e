"""A runtime guard: the test session fails if it reads a file beside the repository.

The tests must run from a plain clone, so nothing they do may depend on a sibling folder (the reference
material kept next to the checkout). `install()` adds an audit hook (sys.addaudithook) that watches the `open`,
`os.listdir` and `os.scandir` events and records every path that lies in a folder beside the
repository: under the repository's parent, outside the repository itself. At the end of the session
`pytest_sessionfinish` turns any such read into a failing exit status, and `pytest_terminal_summary`
lists the paths. tests/conftest.py installs it and re-exports both hooks.

What is not a sibling read, so as not to break normal runs:
- the repository (and whatever a symlink at its top level, such as .venv or models, points to);
- the interpreter's prefixes and the sys.path entries present at install time;
- the temp dir and pytest's temp folders, unless one of them holds the repository's parent (a clone
  at /tmp/x has /tmp as its parent: the temp dir as a whole cannot then be let through);
- anything in a folder beside the repository that appeared after `install()` (a temp folder a test
  made), since only the siblings that existed at the start can hold data the tests might lean on
  (when the parent cannot be listed, every sibling counts);
- the parent folder itself (the import system lists it when the tests run from there).

Only Python-level reads raise audit events: a C library opening a file on its own goes unseen.
"""

from __future__ import annotations

import getpass
import os
import re
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WATCHED_EVENTS = frozenset({"open", "os.listdir", "os.scandir"})
MAX_RECORDED = 200


def _inside(path: str, root: str) -> bool:
    """Whether the absolute, normalised `path` is `root` or lies below it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _pytest_temp_root() -> Path:
    """Where pytest keeps this user's numbered temp folders (as pytest names it)."""
    try:
        user = getpass.getuser()
    except (ImportError, KeyError, OSError):
        user = "unknown"
    return Path(tempfile.gettempdir()) / f"pytest-of-{re.sub(r'[^A-Za-z0-9_]', '_', user)}"


def _names_in(folder: str) -> frozenset[str] | None:
    """The names in `folder`, or None (every name counts) when it cannot be listed."""
    try:
        return frozenset(os.listdir(folder))
    except OSError:
        return None


def default_allowed(repo: Path) -> list[Path]:
    """Places outside the repository that a normal run may read, whatever their location."""
    places = [Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)]
    places += [Path(entry) for entry in sys.path if entry]
    places += [Path(tempfile.gettempdir()), _pytest_temp_root()]
    places += [entry.resolve() for entry in repo.iterdir() if entry.is_symlink()]
    return places


class SiblingReads:
    """Records reads of paths beside `repo`; see the module docstring for what counts."""

    def __init__(self, repo: Path, allowed: list[Path]) -> None:
        self.repo = os.path.abspath(repo)
        self.parent = os.path.dirname(self.repo)
        names = _names_in(self.parent)
        self.siblings = None if names is None else names - {os.path.basename(self.repo)}
        roots = {os.path.abspath(root) for root in allowed}
        self.allowed = tuple(sorted(root for root in roots if self._can_allow(root)))
        self.found: dict[str, str] = {}

    def _can_allow(self, root: str) -> bool:
        """A root that holds the parent would let every sibling through: it is not allowed."""
        return not _inside(self.parent, root)

    def is_sibling_read(self, path: str) -> bool:
        """Whether reading `path` (absolute, or relative to the current directory) reads beside the repo."""
        path = os.path.abspath(path)
        if not path.startswith(self.parent.rstrip(os.sep) + os.sep) or _inside(path, self.repo):
            return False
        first = path[len(self.parent.rstrip(os.sep)) + 1 :].split(os.sep, 1)[0]
        if self.siblings is not None and first not in self.siblings:
            return False
        return not any(_inside(path, root) for root in self.allowed)

    def audit(self, event: str, args: tuple) -> None:
        """The audit hook: cheap for unwatched events, and it never raises."""
        if event not in WATCHED_EVENTS or not args:
            return
        try:
            target = args[0]
            if target is None or isinstance(target, int):
                return
            path = os.fsdecode(os.fspath(target))
            if len(self.found) < MAX_RECORDED and self.is_sibling_read(path):
                self.found.setdefault(os.path.abspath(path), event)
        except Exception:  # noqa: BLE001 - an audit hook that raises would break the read it watches
            return

    def report(self, extra_allowed: Iterable[Path] = ()) -> list[str]:
        """One line per recorded read, leaving out those under `extra_allowed`."""
        extra = [os.path.abspath(root) for root in extra_allowed if self._can_allow(os.path.abspath(root))]
        return [
            f"{path} ({event})"
            for path, event in sorted(self.found.items())
            if not any(_inside(path, root) for root in extra)
        ]


_guard: SiblingReads | None = None


def install(repo: Path = REPO) -> SiblingReads:
    """Start recording sibling reads for the rest of the process (once; audit hooks cannot be removed)."""
    global _guard
    if _guard is None:
        _guard = SiblingReads(repo, default_allowed(repo))
        sys.addaudithook(_guard.audit)
    return _guard


def installed() -> SiblingReads | None:
    return _guard


def _findings(config: pytest.Config) -> list[str]:
    if _guard is None:
        return []
    basetemp = config.getoption("basetemp", None)
    return _guard.report([Path(basetemp)] if basetemp else [])


def _message(findings: list[str]) -> str:
    return (
        f"the tests read {len(findings)} path(s) beside the repository ({_guard.parent}); "
        "tests must use only files inside it:\n  " + "\n  ".join(findings)
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the session when anything beside the repository was read."""
    findings = _findings(session.config)
    if not findings:
        return
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if session.config.pluginmanager.get_plugin("terminalreporter") is None:
        print(_message(findings), file=sys.stderr)


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest's TerminalReporter
    """List the sibling reads at the end of the run."""
    findings = _findings(terminalreporter.config)
    if findings:
        terminalreporter.write_sep("=", "reads outside the repository", red=True, bold=True)
        terminalreporter.write_line(_message(findings))
