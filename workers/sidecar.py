"""A server process a worker starts and owns (a llama.cpp or vLLM server): on a private loopback
port, tied to the worker's life, watched, and restarted when it dies.

- It dies with the worker: the child asks the kernel for SIGKILL when the thread that started it
  ends (PR_SET_PDEATHSIG); that thread is the supervisor's, which lives as long as the worker.
  Otherwise only the worker stops it (its own session: signals to the worker's group pass it by).
  A SIGKILLed worker leaves no server behind holding the model's memory.
- `start()` returns once the server answers its health check, or raises SidecarFailed with the
  end of its output (a bad flag, a model it cannot read) for the worker's failure record.
- When it exits on its own, `on_exit` is told (the engine fails the requests inside it), and the
  supervisor starts it again after a pause that doubles while it keeps dying (1 s .. 30 s).
"""

from __future__ import annotations

import ctypes
import logging
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_FIRST_PAUSE, _LONGEST_PAUSE, _STABLE_SECONDS = 1.0, 30.0, 60.0


class SidecarFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child, between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: the worker's shutdown still stops it


class Sidecar:
    def __init__(self, name: str, command: Callable[[int], list[str]], health_path: str = "/health",
                 ready_timeout: float = 600.0, on_exit: Callable[[int], None] = lambda rc: None) -> None:  # fmt: skip
        """`command(port)`: the argv that starts the server on 127.0.0.1:port."""
        self.name = name
        self._command = command
        self._health_path = health_path
        self._ready_timeout = ready_timeout
        self._on_exit = on_exit
        self._ready = threading.Event()
        self._started = threading.Event()  # the first start is over, well or not
        self._closing = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._failure: str | None = None
        self._output: deque[str] = deque(maxlen=40)  # the server's last lines, for failure reports
        self.url = ""
        self.restarts = 0
        self._thread = threading.Thread(target=self._supervise, name=f"sidecar-{name}", daemon=True)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the server and wait until it is ready; SidecarFailed when it cannot be."""
        self._thread.start()
        self._started.wait()
        if not self._ready.is_set():
            self.close()
            raise SidecarFailed(self._failure or f"{self.name} did not start")

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def close(self) -> None:
        self._closing = True
        self._ready.clear()
        if (proc := self._proc) is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._started.set()

    def _supervise(self) -> None:
        pause = _FIRST_PAUSE
        while not self._closing:
            began = time.monotonic()
            rc = self._run_once()
            if self._closing:
                break
            if not self._started.is_set():  # never became ready the first time: the worker reports it
                self._started.set()
                return
            self.restarts += 1
            self._on_exit(rc)
            pause = _FIRST_PAUSE if time.monotonic() - began > _STABLE_SECONDS else min(pause * 2, _LONGEST_PAUSE)
            log.error("%s exited (%s); starting it again in %.0f s. Its last output:\n%s", self.name, rc, pause,
                      "\n".join(list(self._output)[-10:]))  # fmt: skip
            time.sleep(pause)

    def _run_once(self) -> int:
        """Start the server, mark it ready once it answers, and wait for it to exit; its exit code."""
        port = free_port()
        argv = self._command(port)
        log.info("starting %s: %s", self.name, " ".join(argv))
        try:
            # A session of its own: a signal to the worker's process group (Ctrl-C, a launcher's
            # SIGTERM) reaches the worker only, which closes its engines in order; the server
            # taking it too would look like a crash and be started again mid-shutdown.
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    preexec_fn=_die_with_parent, start_new_session=True)  # noqa: PLW1509  # fmt: skip
        except OSError as exc:
            self._failure = f"cannot start {self.name} ({argv[0]}): {exc}"
            return -1
        self._proc, self.url = proc, f"http://127.0.0.1:{port}"
        threading.Thread(target=self._read_output, args=(proc,), name=f"{self.name}-output", daemon=True).start()
        deadline = time.monotonic() + self._ready_timeout
        while proc.poll() is None and not self._closing:
            if self._healthy():
                self._ready.set()
                self._started.set()
                log.info("%s is ready at %s (pid %d)", self.name, self.url, proc.pid)
                break
            if time.monotonic() > deadline:
                self._failure = f"{self.name} was not ready after {self._ready_timeout:.0f} s"
                proc.kill()
                break
            time.sleep(0.1)
        rc = proc.wait()
        self._ready.clear()
        if self._failure is None or self._started.is_set():
            tail = " | ".join(line for line in list(self._output)[-5:] if line.strip())
            self._failure = f"{self.name} exited with code {rc} before it was ready: {tail or '(no output)'}"
        return rc

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + self._health_path, timeout=2) as reply:
                return bool(reply.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def _read_output(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._output.append(line)
            log.debug("%s: %s", self.name, line)
