"""The stack a benchmark runs against: redis-server, one worker and the gateway, each on a free
port, their logs in `logdir` (started by `queuechat.launcher`)."""

from __future__ import annotations

from pathlib import Path

from queuechat.launcher import GatewayProcess, RedisServer, WorkerProcess, stack_env
from queuechat.launcher import Stack as _Stack


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Stack(_Stack):
    def __init__(self, model: str, models_file: Path, logdir: Path, env: dict[str, str] | None = None,
                 workers: int = 1) -> None:  # fmt: skip
        super().__init__()
        self.model = model
        logdir.mkdir(parents=True, exist_ok=True)
        try:
            redis = self.add(RedisServer(log_path=logdir / "redis.log"))
            env = stack_env(redis.url, models_file, **(env or {}))
            for k in range(workers):
                worker = WorkerProcess([model], env, name=f"bench-{model}-{k}@%h", loglevel="WARNING",
                                       extra_args=["--without-mingle", "--without-gossip"],
                                       log_path=logdir / f"worker-{k}.log")  # fmt: skip
                self.add(worker, wait=False)
            gateway = self.add(GatewayProcess(env, log_level="warning", log_path=logdir / "gateway.log"), wait=False)
        except BaseException:
            self.stop()
            raise
        self.redis_url, self.url = redis.url, gateway.url
        self.procs = {"redis": redis, "worker": worker, "gateway": gateway}
        self.workers = [p for p in self.processes if isinstance(p, WorkerProcess)]

    def wait_ready(self, timeout: float | None = 300) -> None:
        """Until the worker heartbeats for the model and the gateway answers (so it lists the model);
        a stack that does not come up is stopped."""
        try:
            super().wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def rss(self) -> dict[str, float]:
        return {name: rss_mb(self.procs[name].pid) for name in ("gateway", "worker")}
