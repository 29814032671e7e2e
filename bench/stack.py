"""Start the full stack for a benchmark: redis-server, one worker, the gateway; each on a free port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Stack:
    def __init__(self, model: str, models_file: Path, logdir: Path, env: dict[str, str] | None = None) -> None:
        self.model = model
        redis_port, gateway_port = _free_port(), _free_port()
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        env = dict(os.environ, QUEUECHAT_MODELS_FILE=str(models_file), PYTHONUNBUFFERED="1",
                   QUEUECHAT_REDIS_URL=self.redis_url, **(env or {}))  # fmt: skip
        logdir.mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{gateway_port}/v1"
        self.procs: dict[str, subprocess.Popen] = {}
        redis = [shutil.which("redis-server") or "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no"]  # fmt: skip
        worker = [str(BIN / "celery"), "-A", "workers", "worker", "-Q", model, "-n", f"bench-{model}@%h",
                  "--loglevel", "WARNING", "--without-mingle", "--without-gossip"]  # fmt: skip
        gateway = [sys.executable, "-m", "gateway", "--port", str(gateway_port), "--log-level", "warning"]
        for name, argv in (("redis", redis), ("worker", worker), ("gateway", gateway)):
            log = open(logdir / f"{name}.log", "wb")
            self.procs[name] = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            if name == "redis":
                time.sleep(0.5)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see its log")
            try:
                ids = [m["id"] for m in httpx.get(f"{self.url}/models").json()["data"]]
                if self.model in ids:
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        raise TimeoutError("the stack did not come up")

    def rss(self) -> dict[str, float]:
        return {name: rss_mb(self.procs[name].pid) for name in ("gateway", "worker")}

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
