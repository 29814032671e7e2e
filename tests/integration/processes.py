"""Real processes for integration tests: redis-server, Celery workers and the uvicorn gateway,
each on a free port, with their output kept in a log file that failing tests print.

The processes themselves come from `queuechat.launcher`; here are the tests' names and defaults
(logs in the test's work folder, worker names ending in @testhost, waits at construction).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from queuechat import launcher
from queuechat.launcher import BIN, REPO, FlowerProcess, Process, free_port, stack_env, wait_for

__all__ = ["BIN", "REPO", "Flower", "Gateway", "Process", "RedisServer", "Worker", "eventually", "free_port",
           "live_worker", "pause_queue", "stack_env", "wait_for"]  # fmt: skip


def pause_queue(control: object, queue: str, worker: str) -> None:
    """Stop `worker` taking tasks from `queue` (Celery's cancel_consumer), then wait out a BRPOP
    that was already waiting when it stopped: kombu polls with a 1 s server-side timeout, and such
    a poll can still take one task that is queued right after the cancel."""
    assert control.cancel_consumer(queue, destination=[worker], reply=True, timeout=5)  # type: ignore[attr-defined]
    time.sleep(1.5)


def running(pid: int | None) -> bool:
    """Whether process `pid` exists and is not a zombie (dead, waiting to be reaped)."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def eventually(condition: Callable[[], bool], timeout: float, every: float = 0.1) -> bool:
    """Whether `condition` holds within `timeout` seconds (checked once more at the end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()


class RedisServer(launcher.RedisServer):
    """Answers PING once constructed; its files and log in `workdir`.  `persistent`: its
    append-only file in `workdir`/redis-data, which a server started again there reloads."""

    def __init__(self, workdir: Path, port: int | None = None, persistent: bool = False) -> None:
        port = port or free_port()
        data = workdir / "redis-data" if persistent else None
        super().__init__(port, workdir=workdir, log_path=workdir / f"redis-{port}.log", persistent_dir=data)
        self.ready(30 if persistent else 10)  # reloading the append-only file takes a moment


class Worker(launcher.WorkerProcess):
    """Started, not yet live: call `wait_live(redis_client)`."""

    def __init__(self, queues: list[str], env: dict[str, str], workdir: Path, name: str | None = None) -> None:
        name = name or f"{queues[0]}-{free_port()}@testhost"
        super().__init__(queues, env, name=name, log_path=workdir / f"worker-{name}.log")


@contextmanager
def live_worker(queues: list[str], env: dict[str, str], workdir: Path, redis_client: redis.Redis,
                timeout: float = 120, stop_signal: int = signal.SIGTERM) -> Iterator[Worker]:  # fmt: skip
    """A worker for `queues`, yielded once it heartbeats for all of them; stopped afterwards."""
    worker = Worker(queues, env, workdir)
    try:
        worker.wait_live(redis_client, timeout)
        yield worker
    finally:
        worker.stop(stop_signal)


class Gateway(launcher.GatewayProcess):
    """Answers GET /health once constructed."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        port = free_port()
        super().__init__(env, port=port, log_level="info", log_path=workdir / f"gateway-{port}.log")
        self.ready(30)


class Flower(FlowerProcess):
    """Flower (`queuechat flower`, or `program`) with its log in `workdir`; not waited for."""

    def __init__(self, env: dict[str, str], workdir: Path, program: list[str] | None = None) -> None:
        port = free_port()
        super().__init__(port, env, log_path=workdir / f"flower-{port}.log", program=program)
