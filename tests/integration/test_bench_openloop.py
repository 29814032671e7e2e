"""The open-loop benchmark end to end: `python -m bench --echo --request-rate ...` starts its own
stack (Redis, an echo worker, the gateway; bench/stack.py), sends Poisson arrivals for a few
seconds and reports; and `--sweep` on a small range prints a row per rate tried and a verdict."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.openloop import schedule
from queuechat.launcher import REPO


def _bench(*args: str, json_path: Path) -> tuple[str, dict]:
    result = subprocess.run([sys.executable, "-m", "bench", "--echo", *args, "--json", str(json_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=180)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    return result.stdout, json.loads(json_path.read_text())


def _rows(stdout: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines()
            if re.match(r"\| [\d.]", line) or line.startswith("| 0.7 ×")]  # fmt: skip


def test_open_loop_on_the_echo_model(tmp_path: Path) -> None:
    # 20 requests/s for 3 s; each answer takes 0.16-0.64 s (8-32 steps of 20 ms), so they overlap
    stdout, figures = _bench("--request-rate", "20", "--duration", "3", "--step-delay", "0.02",
                             "--output-lens", "8:32", json_path=tmp_path / "run.json")  # fmt: skip
    planned = schedule(20.0, seed=0, duration=3.0, output_lens=(8, 32))
    assert 30 <= len(planned) <= 100  # 60 expected
    [run] = figures["runs"]
    assert run["sent"] == len(planned) and run["errors"] == 0 and run["completed"] == run["sent"]
    assert run["peak_in_flight"] > 1  # open loop: arrivals did not wait for answers
    # the echo repeats the (ASCII) prompt until max_tokens, and --echo counts bytes
    assert run["output_tokens"] == sum(a.max_tokens for a in planned)
    assert run["tokens_per_s"] * run["seconds"] == pytest.approx(run["output_tokens"])
    for a, b in [("ttft_p50", "ttft_p90"), ("ttft_p90", "ttft_p99"), ("itl_p50", "itl_p95"), ("itl_p95", "itl_p99"),
                 ("e2e_p50", "e2e_p99"), ("ttft_p50", "e2e_p50")]:  # fmt: skip
        assert 0 < run[a] <= run[b], (a, b, run)
    assert 0 <= run["good"] <= run["completed"] and 0.0 <= run["good_fraction"] <= 1.0
    assert run["good_fraction"] == run["good"] / run["sent"]
    assert 0 <= run["goodput"] <= run["requests_per_s"] and run["seconds"] >= run["arrival_seconds"]

    title = next(line for line in stdout.splitlines() if line.startswith("### open loop"))
    assert "rate 20 req/s" in title and "seed 0" in title and "SLO: TTFT <= 1000 ms" in title
    assert "ITL p95 <= 200 ms" in title and "max_tokens 8:32" in title
    header = next(line for line in stdout.splitlines() if line.startswith("| rate"))
    for column in ("out tok/s", "goodput req/s", "SLO met", "TTFT p50", "p90", "ITL p50", "p95", "p99 ms", "E2E p50"):
        assert column in header
    [row] = _rows(stdout)
    assert row[:4] == ["20.00", str(run["sent"]), str(run["completed"]), "0"]
    assert row[7] == f"{run['good_fraction']:.0%}" and float(row[8]) == round(run["ttft_p50"] * 1000)


def test_sweep_on_the_echo_model_prints_each_rate_and_the_peak(tmp_path: Path) -> None:
    stdout, figures = _bench("--sweep", "--request-rate", "8", "--max-rate", "16", "--sweep-steps", "1",
                             "--num-requests", "6", "--output-lens", "4:8", json_path=tmp_path / "sweep.json")  # fmt: skip
    sweep = figures["sweep"]
    rows = _rows(stdout)
    tried = [rate for rate, _ in sweep["tried"]]
    assert tried[:1] == [8.0] and all(rate <= 16.0 for rate in tried) and len(tried) <= 3
    assert len(figures["runs"]) == len(rows) == len(tried) + (sweep["peak"] is not None)
    assert all(run["sent"] == 6 for run in figures["runs"])
    assert [float(row[0]) for row in rows[: len(tried)]] == tried
    verdict = next(line for line in stdout.splitlines() if line.startswith("peak:"))
    if sweep["peak"] is not None:
        assert rows[-1][0] == f"0.7 × {sweep['peak']:.2f} = {0.7 * sweep['peak']:.2f}"
        assert f"peak: {sweep['peak']:.2f} req/s meets the SLO" in verdict and "At 70 % of the peak" in verdict
