"""Real processes for integration tests: redis-server, Celery workers and the uvicorn gateway,
each on a free port, with their output kept in a log file that failing tests print."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], bool], what: str, timeout: float, proc: "Process | None" = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.popen.returncode}\n{proc.log_tail()}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}\n{proc.log_tail() if proc else ''}")


def eventually(condition: Callable[[], bool], timeout: float, every: float = 0.1) -> bool:
    """Whether `condition` holds within `timeout` seconds (checked once more at the end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()


class Process:
    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
        )

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


class RedisServer(Process):
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        server = shutil.which("redis-server") or "redis-server"
        argv = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(workdir)]  # fmt: skip
        super().__init__(argv, workdir / f"redis-{self.port}.log")
        self.client = redis.Redis.from_url(self.url)
        wait_for(self.client.ping, "redis-server", 10, self)


def stack_env(redis_url: str, models_file: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    env.update(QUEUECHAT_REDIS_URL=redis_url, QUEUECHAT_MODELS_FILE=str(models_file), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class Worker(Process):
    def __init__(self, queues: list[str], env: dict[str, str], workdir: Path, name: str | None = None) -> None:
        self.queues = queues
        self.name = name or f"{queues[0]}-{free_port()}@testhost"
        argv = [str(BIN / "celery"), "-A", "workers", "worker", "-Q", ",".join(queues), "-n", self.name,
                "--loglevel", "INFO"]  # fmt: skip
        super().__init__(argv, workdir / f"worker-{self.name}.log", env)

    def wait_live(self, redis_client: redis.Redis, timeout: float = 120) -> None:
        from protocol import live_workers_key

        def live() -> bool:
            return all(redis_client.zscore(live_workers_key(q), self.name) is not None for q in self.queues)

        wait_for(live, f"worker {self.name} to announce {self.queues}", timeout, self)


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


class Gateway(Process):
    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "gateway", "--port", str(self.port), "--log-level", "info"]
        super().__init__(argv, workdir / f"gateway-{self.port}.log", env)
        wait_for(lambda: httpx.get(f"{self.base_url}/health").status_code == 200, "gateway", 30, self)
