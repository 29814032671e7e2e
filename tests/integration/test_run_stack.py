"""`make run`'s script: starts what is missing, serves the model, and Ctrl-C stops all it started."""

from __future__ import annotations

import signal
import socket
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.processes import Process, free_port, stack_env, wait_for
from tests.tiny_models import write_models_file


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("redis_already_running", [False, True])
def test_run_serves_the_first_model_and_ctrl_c_stops_everything_it_started(
    tmp_path, tiny_model_dir, redis_server, redis_already_running: bool
) -> None:
    models = write_models_file(tmp_path / "models.yaml", {"tiny-run": {"path": tiny_model_dir}})
    redis_port = redis_server.port if redis_already_running else free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    gateway_port, flower_port = free_port(), free_port()
    redis_dir = tmp_path / "redis"  # where a redis-server the script starts keeps its append-only file
    env = stack_env(redis_url, models, QUEUECHAT_PORT=str(gateway_port), QUEUECHAT_REDIS_DIR=str(redis_dir))
    argv = [sys.executable, "scripts/run_stack.py", "--flower-port", str(flower_port)]
    run = Process(argv, tmp_path / "run.log", env)
    try:
        base = f"http://127.0.0.1:{gateway_port}/v1"

        def model_listed() -> bool:
            return "tiny-run" in [m["id"] for m in httpx.get(f"{base}/models").json()["data"]]

        wait_for(model_listed, "make run's gateway and worker", 120, run)
        client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model="tiny-run", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=3)  # fmt: skip
        assert reply.usage.completion_tokens >= 1
        assert len(_processes_with_env(f"QUEUECHAT_MODELS_FILE={models}")) >= 3  # script, worker, gateway...
        wait_for(lambda: _listening(flower_port), "flower", 60, run)

        run.popen.send_signal(signal.SIGINT)
        assert run.popen.wait(timeout=60) == 0, run.log_tail()
    finally:
        run.stop()  # SIGTERM: on a failure above, the script still stops what it started
    log = run.log_tail(100_000)
    assert "stopped everything it started" in log
    assert ("starting redis-server" in log) is not redis_already_running
    assert ("--appendonly yes --appendfsync everysec" in log) is not redis_already_running  # persistent
    assert (redis_dir / "appendonlydir").is_dir() is not redis_already_running
    time.sleep(0.5)
    assert not _listening(gateway_port) and not _listening(flower_port)
    assert _listening(redis_port) is redis_already_running
    assert _processes_with_env(f"QUEUECHAT_MODELS_FILE={models}") == [], "nothing the script started outlives it"


def _processes_with_env(entry: str) -> list[int]:
    """Pids of live processes whose environment holds `entry` (the children inherit the script's)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().split(") ")[1][0]
        except OSError:
            continue
        if entry.encode() in environ and state != "Z":
            found.append(int(proc.name))
    return found
