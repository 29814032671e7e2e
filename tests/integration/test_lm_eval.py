"""lm-evaluation-harness's `local-completions` model runs a tiny multiple-choice task against the
stack, end to end: it sends token-id prompts (a batch of them per request) with echo, logprobs 1
and max_tokens 1, and reads the prompt's logprobs back.  Its log-likelihoods must be what the tiny
model gives directly, and its accuracy what those give."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration import reference

TASK_DIR = Path(__file__).parent / "lm_eval_task"
TASK = "queuechat_tiny_mc"
TOLERANCE = 1e-3  # a sum of a few tokens' logprobs, each within 1e-4 of the model's own

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is a test extra")


def _task_dir(tmp_path: Path) -> Path:
    """The task's yaml with its data file's absolute path (datasets reads relative to the cwd)."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    data = TASK_DIR / "tiny_mc.jsonl"
    text = (TASK_DIR / f"{TASK}.yaml").read_text().replace("test: tiny_mc.jsonl", f"test: {data}")
    (folder / f"{TASK}.yaml").write_text(text)
    return folder


def _run_lm_eval(gateway, tiny_model_dir: Path, tmp_path: Path) -> tuple[dict, list[dict]]:
    out = tmp_path / "out"
    model_args = (f"model=tiny-a,base_url={gateway.base_url}/v1/completions,tokenizer_backend=huggingface,"
                  f"tokenizer={tiny_model_dir},tokenized_requests=True,num_concurrent=1,max_retries=1,"
                  "max_length=256")  # fmt: skip
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "OPENAI_API_KEY": "unused", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    command = [sys.executable, "-m", "lm_eval", "run", "--model", "local-completions", "--model_args", model_args,
               "--tasks", TASK, "--include_path", str(_task_dir(tmp_path)), "--batch_size", "2",
               "--output_path", str(out), "--log_samples"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = [json.loads(line) for line in next(out.rglob(f"samples_{TASK}_*.jsonl")).read_text().splitlines()]
    return results, samples


def _direct_loglikelihood(model_dir: Path, context: str, continuation: str) -> float:
    """What lm-eval's pair encoding (trailing spaces move to the continuation; the whole text is
    encoded, then split) and the model give for `continuation` after `context`."""
    tokenizer, _ = reference._load(model_dir)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    context_ids = encode(context)
    ids = encode(context + continuation)
    logprobs = reference.prompt_logprobs(model_dir, ids)
    return sum(logprobs[i - 1][ids[i]] for i in range(len(context_ids), len(ids)))


def test_lm_eval_local_completions_runs_a_multiple_choice_task(gateway, tiny_model_dir, tmp_path: Path) -> None:
    results, samples = _run_lm_eval(gateway, tiny_model_dir, tmp_path)
    assert len(samples) == 4
    correct = 0
    for sample in samples:
        arguments = [(a["arg_0"], a["arg_1"]) for a in sample["arguments"].values()]
        served = [float(r[0][0]) for r in sample["resps"]]
        direct = [_direct_loglikelihood(tiny_model_dir, *pair) for pair in arguments]
        assert served == pytest.approx(direct, abs=TOLERANCE)
        correct += int(max(range(len(direct)), key=direct.__getitem__) == sample["target"])
    assert results["results"][TASK]["acc,none"] == pytest.approx(correct / len(samples))
