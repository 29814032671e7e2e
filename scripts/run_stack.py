"""`make run`: serve one model with everything it needs, in the foreground.

Uses the Redis at REDIS_URL (default redis://127.0.0.1:6379/0) or, if none answers there, starts
a local redis-server on that port.  Then starts one worker for the model, Flower on :5555 and the
gateway on http://127.0.0.1:8000.  Ctrl-C (or SIGTERM) stops everything it started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.settings import GatewaySettings  # noqa: E402
from protocol.models_file import load_models_file  # noqa: E402

BIN = Path(sys.executable).parent


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def wait_until(check, what: str, timeout: float, children: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for child in children:
            if child.poll() is not None:
                raise SystemExit(f"{' '.join(map(str, child.args[:4]))} exited with {child.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.3)


class Stack:
    def __init__(self) -> None:
        self.children: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        print(f"[run] starting {name}: {' '.join(argv)}", flush=True)
        # Own session: Ctrl-C reaches only this script, which then stops the children in order.
        child = subprocess.Popen(argv, env=env, cwd=REPO, start_new_session=True)
        self.children.append(child)
        return child

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 20
        for child in reversed(self.children):
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        print("[run] stopped everything it started", flush=True)


def start_redis(stack: Stack, url: str, env: dict[str, str]) -> None:
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"no Redis answers at {url}, and it is not local, so it cannot be started here")
    server = shutil.which("redis-server")
    if not server:
        raise SystemExit(f"no Redis answers at {url} and redis-server is not installed")
    port = str(parsed.port or 6379)
    argv = [server, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    child = stack.start("redis-server", argv, env)
    wait_until(lambda: redis_answers(url), f"redis-server on port {port}", 15, [child])


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    settings = GatewaySettings()
    models = load_models_file(settings.models_file)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=models.names[0], choices=models.names)
    parser.add_argument("--embeddings-model", default="all-minilm-l6-v2" if models.get("all-minilm-l6-v2") else "",
                        help="also served by the worker, for /v1/embeddings ('' for none)")  # fmt: skip
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--flower-port", type=int, default=5555, help="0 to run without Flower")
    args = parser.parse_args()

    env = dict(os.environ, QUEUECHAT_REDIS_URL=settings.redis_url, PYTHONUNBUFFERED="1")
    stack = Stack()
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a background shell ignores it
        signal.signal(signum, _interrupt)
    try:
        if not redis_answers(settings.redis_url):
            start_redis(stack, settings.redis_url, env)
        queues = ",".join(q for q in (args.model, args.embeddings_model) if q)
        worker = [str(BIN / "celery"), "-A", "workers", "worker", "-Q", queues,
                  "-n", f"{args.model}@%h", "--loglevel", "INFO"]  # fmt: skip
        stack.start("worker", worker, env)
        if args.flower_port:
            flower = [str(BIN / "queuechat"), "flower", f"--port={args.flower_port}", "--address=127.0.0.1"]
            # bound to 127.0.0.1 only: its HTTP API (queue lengths ...) may answer without a password
            stack.start("flower", flower, {"FLOWER_UNAUTHENTICATED_API": "true", **env})
        gateway = [sys.executable, "-m", "gateway", "--host", args.host, "--port", str(args.port)]
        stack.start("gateway", gateway, env)
        base = f"http://{args.host}:{args.port}"
        print(f"[run] gateway: {base}/v1  (model '{args.model}' is served once its worker has loaded it)", flush=True)
        print(f"[run] chat page: {base}/   metrics: {base}/metrics", flush=True)
        if args.flower_port:
            print(f"[run] flower:  http://127.0.0.1:{args.flower_port}", flush=True)
        print("[run] Ctrl-C stops everything", flush=True)
        while all(child.poll() is None for child in stack.children):
            time.sleep(0.5)
        failed = next(c for c in stack.children if c.poll() is not None)
        print(f"[run] {' '.join(map(str, failed.args[:4]))} exited with {failed.returncode}", flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
