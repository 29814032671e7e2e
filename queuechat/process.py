"""One child process and how to wait for it: free ports, readiness polls, stopping a process group.

Nothing here knows QueueChat; `queuechat.launcher` builds its processes on `Process`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parent.parent
LOCAL = "127.0.0.1"
P = TypeVar("P", bound="Process")


def free_port(host: str = LOCAL) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], object], what: str, timeout: float, *watch: Process, every: float = 0.2) -> None:
    """Poll `check` until it returns true; fail early when a watched process exits.  A check that
    raises counts as not yet (the server is not listening yet)."""
    deadline = time.monotonic() + timeout
    while True:
        for proc in watch:
            if proc.exited():
                raise RuntimeError(f"{what}: {proc.name} exited with {proc.popen.returncode}\n{proc.log_tail()}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if time.monotonic() >= deadline:
            break
        time.sleep(every)
    raise TimeoutError(f"timed out waiting for {what}\n" + "".join(proc.log_tail() for proc in watch[:1]))


class Process:
    """A child process in its own process group (so Ctrl-C reaches only its parent, which stops it),
    started at construction; its output goes to `log_path`, or to this process's own when None.
    `prefix` goes before `argv`: a wrapper that execs it, e.g. `ip netns exec NAME` (the pid, and
    so the signals, are then the wrapped program's)."""

    ready_timeout = 30.0

    def __init__(self, argv: list[str], log_path: Path | None = None, env: Mapping[str, str] | None = None, *,
                 name: str | None = None, cwd: Path = REPO, prefix: Sequence[str] = ()) -> None:  # fmt: skip
        self.name = name or Path(str(argv[0])).name
        self.argv = [str(arg) for arg in (*prefix, *argv)]
        self.log_path = Path(log_path) if log_path is not None else None
        self.env = dict(env) if env is not None else None
        self._log = open(self.log_path, "wb") if self.log_path else None
        try:
            self.popen = subprocess.Popen(self.argv, env=self.env, cwd=cwd, start_new_session=True, stdout=self._log,
                                          stderr=subprocess.STDOUT if self._log else None)  # fmt: skip
        except BaseException:
            if self._log:
                self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def describe(self) -> str:
        return self.name

    def is_ready(self) -> bool:
        return True

    def wait_ready(self: P, timeout: float | None = None, watch: Iterable[Process] = ()) -> P:
        """Return once ready; raise if it (or a watched process) exits first, or on timeout."""
        others = [proc for proc in watch if proc is not self]
        wait_for(self.is_ready, self.describe(), self.ready_timeout if timeout is None else timeout, self, *others)
        return self

    def ready(self: P, timeout: float | None = None) -> P:
        """`wait_ready`, stopping the process when it never gets there."""
        try:
            return self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def log_tail(self, chars: int = 6000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        """`sig` to its process group, SIGKILL after `timeout` seconds; then whatever is left in the group."""
        if self.popen.poll() is None:
            self._signal_group(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait()
            self._signal_group(signal.SIGKILL)  # children it left behind (the group outlives its leader)
        if self._log:
            self._log.close()

    def __enter__(self: P) -> P:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
