"""Engines beyond transformers, through the whole stack (real Redis, Celery workers, uvicorn, the
openai SDK): the default GGUF model on llama.cpp's server (where `make llama-cpp` built it), and the
vLLM engine against a fake server that speaks vLLM's protocol (tests/fakes/openai_engine.py).

Each engine's server is started and owned by its worker: killed, it is restarted and its requests
fail cleanly; the worker killed, it goes too."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import DEFAULT_MODEL_FILE, REPO
from tests.integration.processes import Gateway, RedisServer, Worker, eventually, running, stack_env
from tests.tiny_models import write_models_file
from workers.engine_kinds import find_llama_server
from workers.settings import WorkerSettings

LLAMA_SERVER = find_llama_server(WorkerSettings().cache_dir)
needs_llama_cpp = pytest.mark.skipif(LLAMA_SERVER is None, reason="llama.cpp's server is not built here "
                                     "(`make llama-cpp`; `make test` builds it where it can)")  # fmt: skip
FAKE = [sys.executable, "-m", "tests.fakes.openai_engine"]
LLAMA = "smollm2-llama-cpp"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
EOS = 2  # SmolLM2's <|im_end|>; biased away, a reply runs to its limit
_READY = re.compile(r"is ready at (http://127\.0\.0\.1:\d+) \(pid (\d+)\)")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[dict]:
    """Its own Redis and gateway (the engines' models are in no other test's models file)."""
    workdir = tmp_path_factory.mktemp("engines")
    record = workdir / "fake-requests.jsonl"
    models = {
        "fake-vllm": {"adapter": "hf-causal", "path": tiny_model_dir, "engine": "vllm", "slots": 4,
                      "options": {"engine_command": FAKE, "engine_args": ["--token-delay", "0.05", "--record", str(record)]}},
        LLAMA: {"adapter": "hf-causal", "path": DEFAULT_MODEL_FILE, "engine": "llama-cpp", "slots": 4,
                "defaults": {"temperature": 0.0, "max_tokens": 512}},
    }  # fmt: skip
    redis = RedisServer(workdir)
    env = stack_env(redis.url, write_models_file(workdir / "models.yaml", models), PYTHONPATH=str(REPO))
    if LLAMA_SERVER is not None:
        env["QUEUECHAT_LLAMA_SERVER"] = str(LLAMA_SERVER)
    gateway = Gateway(env, workdir)
    try:
        yield {"env": env, "workdir": workdir, "redis": redis, "gateway": gateway, "record": record,
               "client": openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0, timeout=60)}  # fmt: skip
    finally:
        gateway.stop()
        redis.stop()


def _worker(stack: dict, model: str) -> Worker:
    worker = Worker([model], stack["env"], stack["workdir"])
    worker.wait_live(stack["redis"].client, 180)
    return worker


@pytest.fixture(scope="module")
def llama_worker(stack: dict) -> Iterator[Worker]:
    if LLAMA_SERVER is None:
        pytest.skip("llama.cpp's server is not built here")
    worker = _worker(stack, LLAMA)
    yield worker
    worker.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def fake_worker(stack: dict) -> Iterator[Worker]:
    worker = _worker(stack, "fake-vllm")
    yield worker
    worker.stop(signal.SIGKILL)


def _sidecar(worker: Worker, after: int = 0) -> tuple[str, int]:
    """The newest (url, pid) of the server the worker started, from its log."""
    found = _READY.findall(worker.log_tail(200_000))
    assert len(found) > after, "the worker started no (new) engine server"
    url, pid = found[-1]
    return url, int(pid)


def _direct_completion(prompt: str, max_tokens: int) -> str:
    """What llama.cpp's own server answers, started here beside the stack with the same file."""
    from workers.sidecar import free_port

    port = free_port()
    proc = subprocess.Popen([str(LLAMA_SERVER), "--model", str(DEFAULT_MODEL_FILE), "--host", "127.0.0.1", "--port",
                             str(port), "--parallel", "1", "--no-webui"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert eventually(lambda: _answers(f"http://127.0.0.1:{port}/health"), 60)
        body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            return json.loads(reply.read())["choices"][0]["text"]
    finally:
        proc.kill()
        proc.wait()


def _text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.read().decode()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


# ---- llama.cpp -------------------------------------------------------------------------------


@needs_llama_cpp
def test_llama_cpp_answers_exactly_as_its_own_server(stack, llama_worker) -> None:
    client = stack["client"]
    prompt = "The capital of France is"
    reply = client.completions.create(model=LLAMA, prompt=prompt, temperature=0, max_tokens=12)
    assert reply.choices[0].text == _direct_completion(prompt, 12)
    assert reply.usage.completion_tokens == 12 and reply.choices[0].finish_reason == "length"
    assert "Paris" in reply.choices[0].text


@needs_llama_cpp
def test_llama_cpp_chat_streams_the_same_reply_it_gives_whole(stack, llama_worker) -> None:
    client = stack["client"]
    whole = client.chat.completions.create(model=LLAMA, messages=QUESTION, max_tokens=40)
    stream = client.chat.completions.create(model=LLAMA, messages=QUESTION, max_tokens=40, stream=True,
                                            stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == whole.choices[0].message.content and whole.choices[0].message.content
    assert sum(1 for p in pieces if p) >= 5, "streamed piece by piece"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert whole.usage.prompt_tokens > 20  # the chat template's tokens, counted by the worker


@needs_llama_cpp
def test_llama_cpp_stops_seeds_and_logprobs(stack, llama_worker) -> None:
    client = stack["client"]
    greedy = client.completions.create(model=LLAMA, prompt="One, two, three,", max_tokens=12).choices[0].text
    stop = greedy.split(",")[1].strip()
    stopped = client.completions.create(model=LLAMA, prompt="One, two, three,", max_tokens=12, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop" and stop not in stopped.choices[0].text
    assert greedy.startswith(stopped.choices[0].text)
    sampled = [client.completions.create(model=LLAMA, prompt="Once upon a time", max_tokens=24, temperature=1.0,
                                         seed=seed).choices[0].text for seed in (7, 7, 8)]  # fmt: skip
    assert sampled[0] == sampled[1] != sampled[2]
    scored = client.completions.create(model=LLAMA, prompt="The capital of France is", max_tokens=4, logprobs=3)
    logprobs = scored.choices[0].logprobs
    assert "".join(logprobs.tokens) == scored.choices[0].text and len(logprobs.tokens) == 4
    assert all(len(top) == 3 and max(top.values()) >= lp - 1e-6 for top, lp in zip(logprobs.top_logprobs, logprobs.token_logprobs))
    chat = client.chat.completions.create(model=LLAMA, messages=QUESTION, max_tokens=3, logprobs=True, top_logprobs=2)
    assert all(len(entry.top_logprobs) == 2 for entry in chat.choices[0].logprobs.content)


@needs_llama_cpp
def test_llama_cpp_serves_responses_background_jobs_and_tools(stack, llama_worker) -> None:
    """The queue's own features ride on any engine: a background response (a kept job, read back
    later) gives what the plain one gives; a chat offering tools completes as one."""
    client = stack["client"]
    ask = {"model": LLAMA, "input": "What is the capital of France?", "max_output_tokens": 16, "temperature": 0}
    plain = client.responses.create(**ask)
    queued = client.responses.create(**ask, background=True)
    assert queued.status == "queued" and plain.output_text
    assert eventually(lambda: client.responses.retrieve(queued.id).status not in ("queued", "in_progress"), 60)
    done = client.responses.retrieve(queued.id)
    assert done.output_text == plain.output_text and done.usage.output_tokens == plain.usage.output_tokens
    weather = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}  # fmt: skip
    reply = client.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "Weather in Paris?"}],
                                           tools=[weather], max_tokens=48)  # fmt: skip
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert reply.choices[0].message.content or reply.choices[0].message.tool_calls


@needs_llama_cpp
@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"extra_body": {"prompt_logprobs": 1}}, "prompt_logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"extra_body": {"guided_choice": ["yes", "no"]}}, "guided_choice"),
    ],
)
def test_what_llama_cpp_cannot_give_is_refused_not_ignored(stack, llama_worker, extra, param) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        stack["client"].chat.completions.create(model=LLAMA, messages=QUESTION, max_tokens=5, **extra)
    assert refused.value.body["param"] == param and "llama-cpp" in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError) as echoed:
        stack["client"].completions.create(model=LLAMA, prompt="Hi", max_tokens=2, echo=True, logprobs=1)
    assert echoed.value.body["param"] == "echo"


@needs_llama_cpp
def test_a_closed_stream_stops_decoding_in_the_llama_cpp_server(stack, llama_worker) -> None:
    url, _ = _sidecar(llama_worker)
    stream = _endless_stream(stack["client"], chunks=5)
    assert _busy_slots(url) == 1
    stream.close()
    assert eventually(lambda: _busy_slots(url) == 0, 10), "llama.cpp still decodes the abandoned request"


def _endless_stream(client: openai.OpenAI, chunks: int):
    """A streamed completion that does not end by itself (end-of-text biased away), `chunks` of it read."""
    stream = client.completions.create(model=LLAMA, prompt="Count:", max_tokens=3000, stream=True,
                                       logit_bias={str(EOS): -100})  # fmt: skip
    for _ in range(chunks):
        next(stream)
    return stream


def _stream_error(stream) -> str:
    """The message of the error that ends `stream` (the test fails if it ends without one)."""
    with pytest.raises(openai.APIError) as ended:
        for _ in stream:
            pass
    return str(ended.value.message)


def _busy_slots(url: str) -> int:
    with urllib.request.urlopen(f"{url}/slots", timeout=5) as reply:
        return sum(1 for slot in json.loads(reply.read()) if slot.get("is_processing"))


@needs_llama_cpp
def test_a_killed_llama_cpp_server_fails_its_request_and_comes_back(stack, llama_worker) -> None:
    client = stack["client"]
    started = len(_READY.findall(llama_worker.log_tail(200_000)))
    _, pid = _sidecar(llama_worker)
    stream = _endless_stream(client, chunks=3)
    os.kill(pid, signal.SIGKILL)
    assert "stopped answering" in _stream_error(stream)
    assert eventually(lambda: len(_READY.findall(llama_worker.log_tail(200_000))) > started, 60), "not restarted"
    _, new_pid = _sidecar(llama_worker, after=started)
    assert new_pid != pid
    again = client.completions.create(model=LLAMA, prompt="The capital of France is", max_tokens=4)
    assert again.usage.completion_tokens == 4
    metrics = f"{stack['gateway'].base_url}/metrics"
    restarted = re.compile(r'queuechat_worker_engine_restarts\{model="smollm2-llama-cpp",worker="[^"]+"\} 1\.0')
    lost = re.compile(r'queuechat_worker_engine_lost_requests\{model="smollm2-llama-cpp",worker="[^"]+"\} 1\.0')
    assert eventually(lambda: restarted.search(_text(metrics)) and lost.search(_text(metrics)), 10), "not in /metrics"


@needs_llama_cpp
def test_a_killed_worker_takes_its_llama_cpp_server_with_it(stack, llama_worker) -> None:
    _, pid = _sidecar(llama_worker)
    stream = _endless_stream(stack["client"], chunks=3)
    llama_worker.stop(signal.SIGKILL)
    assert "stopped" in _stream_error(stream)
    assert eventually(lambda: not running(pid), 10), "the llama.cpp server outlived its worker"


# ---- vLLM, against a fake server that speaks its protocol -------------------------------------


def test_the_vllm_engine_serves_chat_and_streams_through_the_stack(stack, fake_worker) -> None:
    client = stack["client"]
    whole = client.chat.completions.create(model="fake-vllm", messages=QUESTION, max_tokens=6, temperature=0,
                                           logprobs=True, top_logprobs=2)  # fmt: skip
    streamed = client.chat.completions.create(model="fake-vllm", messages=QUESTION, max_tokens=6, temperature=0,
                                              stream=True)  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == whole.choices[0].message.content and len(text.split()) == 6
    assert [len(e.top_logprobs) for e in whole.choices[0].logprobs.content] == [2] * 6
    sent = [json.loads(line)["body"] for line in stack["record"].read_text().splitlines()][-1]
    assert sent["model"] == "fake-vllm" and all(isinstance(t, int) for t in sent["prompt"])
    listed = {m.id: m for m in client.models.list()}
    assert "fake-vllm" in listed


def test_what_the_vllm_engine_cannot_give_is_refused_before_queueing(stack, fake_worker) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        stack["client"].chat.completions.create(model="fake-vllm", messages=QUESTION, max_tokens=2,
                                                extra_body={"guided_regex": "[a-z]+"})  # fmt: skip
    assert refused.value.body["param"] == "guided_regex" and "vllm" in refused.value.body["message"]


def test_a_killed_vllm_worker_takes_its_server_with_it(stack, fake_worker) -> None:
    _, pid = _sidecar(fake_worker)
    assert running(pid)
    fake_worker.stop(signal.SIGKILL)
    assert eventually(lambda: not running(pid), 10), "the engine server outlived its worker"


def test_a_stopped_worker_closes_its_server_without_restarting_it(stack) -> None:
    """SIGTERM to the worker's process group (Ctrl-C, the launcher): only the worker gets it and
    closes its engine server in order; a server in the same group would die first, look like a
    crash and be started again mid-shutdown."""
    worker = _worker(stack, "fake-vllm")
    _, pid = _sidecar(worker)
    worker.stop(signal.SIGTERM)
    assert eventually(lambda: not running(pid), 10), "the engine server outlived its worker"
    log = worker.log_tail(200_000)
    assert "starting it again" not in log and "exited" not in log
