"""`make run`: serve one model with everything it needs, in the foreground.

Uses the Redis at REDIS_URL (default redis://127.0.0.1:6379/0) or, if none answers there, starts
a local redis-server on that port, persistent: its append-only file (fsynced every second) in
--redis-dir (default $QUEUECHAT_REDIS_DIR, else ~/.cache/queuechat/redis), so the queued requests,
kept responses and batches of one run are there for the next.  With QUEUECHAT_REDIS_SENTINELS set,
the Sentinels' master must answer: nothing is started for it.  Then starts Flower on :5555, one
worker for the model and the gateway on http://127.0.0.1:8000.  Ctrl-C (or SIGTERM) stops
everything it started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.settings import GatewaySettings  # noqa: E402
from protocol.models_file import load_models_file  # noqa: E402
from queuechat.launcher import (  # noqa: E402
    FlowerProcess,
    GatewayProcess,
    Process,
    RedisServer,
    Stack,
    WorkerProcess,
    redis_answers,
    stack_env,
)  # fmt: skip


def start(stack: Stack, proc: Process) -> None:
    print(f"[run] starting {proc.name}: {' '.join(proc.argv)}", flush=True)
    stack.add(proc, wait=False)


def default_redis_dir() -> Path:
    return Path(os.environ.get("QUEUECHAT_REDIS_DIR") or Path.home() / ".cache" / "queuechat" / "redis")


def start_redis(stack: Stack, url: str, data_dir: Path) -> None:
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"no Redis answers at {url}, and it is not local, so it cannot be started here")
    if not shutil.which("redis-server"):
        raise SystemExit(f"no Redis answers at {url} and redis-server is not installed")
    server = RedisServer(parsed.port or 6379, persistent_dir=data_dir)
    start(stack, server)
    try:
        server.wait_ready()
    except (RuntimeError, TimeoutError) as exc:
        raise SystemExit(str(exc)) from exc


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
    parser.add_argument("--redis-dir", type=Path, default=default_redis_dir(),
                        help="where a redis-server started here keeps its append-only file (%(default)s)")
    args = parser.parse_args()

    env = stack_env(settings.redis_url)
    stack = Stack()
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a background shell ignores it
        signal.signal(signum, _interrupt)
    try:
        if not redis_answers(settings):
            if settings.redis_sentinels:  # QUEUECHAT_REDIS_SENTINELS: a Redis of its own is not for starting here
                raise SystemExit(f"no master '{settings.redis_master}' answers through the Sentinels at "
                                 f"{settings.redis_sentinels}")
            start_redis(stack, settings.redis_url, args.redis_dir)
        if args.flower_port:  # on 127.0.0.1 only: its HTTP API (queue lengths ...) answers without a password
            start(stack, FlowerProcess(args.flower_port, env))
        start(stack, WorkerProcess([args.model, args.embeddings_model], env, name=f"{args.model}@%h"))
        start(stack, GatewayProcess(env, host=args.host, port=args.port))
        base = f"http://{args.host}:{args.port}"
        print(f"[run] gateway: {base}/v1  (model '{args.model}' is served once its worker has loaded it)", flush=True)
        print(f"[run] chat page: {base}/   metrics: {base}/metrics", flush=True)
        if args.flower_port:
            print(f"[run] flower:  http://127.0.0.1:{args.flower_port}", flush=True)
        print("[run] Ctrl-C stops everything", flush=True)
        while (failed := stack.exited()) is None:
            time.sleep(0.5)
        print(f"[run] {failed.name} exited with {failed.popen.returncode}", flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the shutdown short
            signal.signal(signum, signal.SIG_IGN)
        stack.stop()
        print("[run] stopped everything it started", flush=True)


if __name__ == "__main__":
    sys.exit(main())
