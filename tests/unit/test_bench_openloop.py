"""The open-loop benchmark's parts (bench/openloop.py): the seeded Poisson schedule and its mixed
lengths, the per-request SLO and the figures built on it, the sweep's search (against a fake
measurement), and the client against a fake server: arrivals do not wait for answers, and a
request still unanswered after the drain is an error."""

from __future__ import annotations

import asyncio
import json
import math
import statistics

import httpx
import pytest

from bench.openloop import SLO, TOPICS, RequestResult, RunReport, run_open_loop, schedule, sweep


def _words(arrival) -> int:
    return len(arrival.messages[0]["content"].split("\n\n", 1)[1].split())


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    a, b = schedule(4.0, seed=7, duration=30), schedule(4.0, seed=7, duration=30)
    assert a == b and len(a) > 10
    c = schedule(4.0, seed=8, duration=30)
    assert [x.at for x in c] != [x.at for x in a]
    assert [x.max_tokens for x in c] != [x.max_tokens for x in a]


def test_inter_arrival_times_are_exponential_with_mean_one_over_the_rate() -> None:
    rate = 5.0
    arrivals = schedule(rate, seed=0, duration=None, num_requests=20_000)
    assert len(arrivals) == 20_000 and arrivals[0].at == 0.0
    gaps = [b.at - a.at for a, b in zip(arrivals, arrivals[1:])]
    assert all(g >= 0 for g in gaps)
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1 / rate, rel=0.03)
    # exponential, not evenly spaced: the spread equals the mean, and P(gap > mean) = 1/e
    assert statistics.stdev(gaps) == pytest.approx(mean, rel=0.05)
    assert sum(g > mean for g in gaps) / len(gaps) == pytest.approx(math.exp(-1), abs=0.02)


def test_arrivals_stop_at_the_duration_or_the_number_whichever_comes_first() -> None:
    by_time = schedule(10.0, seed=1, duration=20)
    assert by_time[-1].at < 20 and 150 < len(by_time) < 250  # 200 expected; a Poisson count's sd is ~14
    assert len(schedule(10.0, seed=1, duration=20, num_requests=50)) == 50
    assert schedule(10.0, seed=1, duration=20, num_requests=10_000) == by_time
    with pytest.raises(ValueError):
        schedule(10.0, duration=None, num_requests=None)


def test_lengths_are_mixed_within_their_ranges_and_do_not_move_the_arrival_times() -> None:
    arrivals = schedule(10.0, seed=3, duration=None, num_requests=2000, output_lens=(16, 128), prompt_words=(5, 310))
    max_tokens = [a.max_tokens for a in arrivals]
    assert min(max_tokens) >= 16 and max(max_tokens) <= 128
    assert min(max_tokens) < 24 and max(max_tokens) > 120 and len(set(max_tokens)) > 100
    words = [_words(a) for a in arrivals]
    assert min(words) >= 5 and max(words) <= 310
    assert min(words) < 20 and max(words) > 290
    assert {a.messages[0]["content"].split("\n\n", 1)[1].split()[0] for a in arrivals} == {
        text.split()[0] for text in TOPICS.values()}  # every topic is drawn
    assert len({a.messages[0]["content"] for a in arrivals}) == len(arrivals)  # no two prompts alike
    other = schedule(10.0, seed=3, duration=None, num_requests=2000, output_lens=(1, 4), prompt_words=(1, 2))
    assert [a.at for a in other] == [a.at for a in arrivals]
    assert all(1 <= a.max_tokens <= 4 and 1 <= _words(a) <= 2 for a in other)


def _ok(ttft: float, gaps: list[float], tokens: int = 10, latency: float = 1.0) -> RequestResult:
    return RequestResult(sent=0.0, ttft=ttft, gaps=gaps, latency=latency, tokens=tokens)


def test_the_slo_needs_the_first_token_in_time_and_the_requests_own_itl_p95() -> None:
    slo = SLO(ttft=1.0, itl=0.2)
    assert slo.met(_ok(0.5, [0.05] * 40))
    assert slo.met(_ok(1.0, [0.2] * 5))  # both bounds inclusive
    assert slo.met(_ok(0.5, []))  # one chunk: no gap to judge
    assert not slo.met(_ok(1.01, [0.05] * 40))
    assert slo.met(_ok(0.5, [0.05] * 97 + [0.9] * 3))  # 3 % slow gaps: p95 is still fast
    assert not slo.met(_ok(0.5, [0.05] * 90 + [0.9] * 10))  # 10 %: p95 is slow
    assert not slo.met(RequestResult(sent=0.0, error="HTTPStatusError: 429"))


def test_goodput_and_the_figures_of_a_run() -> None:
    results = ([_ok(0.1, [0.01] * 9, tokens=10, latency=0.2)] * 6 + [_ok(2.0, [0.01] * 9, tokens=10, latency=2.1)] * 2
               + [_ok(0.1, [0.5] * 9, tokens=10, latency=4.6)] + [RequestResult(sent=0.0, error="unfinished")])  # fmt: skip
    report = RunReport(rate=2.0, results=results, seconds=5.0, arrival_seconds=4.0, peak_in_flight=3, slo=SLO(1.0, 0.2))
    f = report.figures()
    assert (f["sent"], f["completed"], f["errors"], f["good"]) == (10, 9, 1, 6)
    assert f["output_tokens"] == 90 and f["tokens_per_s"] == pytest.approx(18.0)
    assert f["requests_per_s"] == pytest.approx(9 / 5) and f["goodput"] == pytest.approx(6 / 5)
    assert f["good_fraction"] == pytest.approx(0.6)  # errors count against it
    assert report.meets(0.6) and not report.meets(0.61)
    assert f["ttft_p50"] == pytest.approx(0.1) and f["ttft_p90"] == pytest.approx(2.0)
    assert f["itl_p50"] == pytest.approx(0.01) and f["itl_p99"] == pytest.approx(0.5)
    assert f["e2e_p50"] == pytest.approx(0.2) and f["e2e_p99"] == pytest.approx(2.1 + 0.92 * 2.5)  # interpolated
    assert not RunReport(1.0, [], 0.0, 0.0, 0).meets(0.0)  # nothing measured: no pass


def test_the_sweep_finds_the_peak_within_its_bisection_precision() -> None:
    calls: list[float] = []

    def fake_server(rate: float) -> bool:  # meets the SLO below 7.3 requests/s
        calls.append(rate)
        return rate < 7.3

    found = sweep(fake_server, start=1.0, max_rate=256.0, steps=4)
    assert calls[:4] == [1.0, 2.0, 4.0, 8.0]  # doubling until it fails
    assert len(calls) == 4 + 4 and found.tried == [(r, r < 7.3) for r in calls]
    assert found.peak <= 7.3 < found.failed
    assert found.failed - found.peak <= (8.0 - 4.0) / 2**4
    finer = sweep(lambda rate: rate < 7.3, start=1.0, steps=10)
    assert finer.peak <= 7.3 < finer.failed and finer.failed - finer.peak <= 4.0 / 2**10


def test_the_sweep_from_above_the_peak_bisects_down_and_is_bounded_by_max_rate() -> None:
    above = sweep(lambda rate: rate < 7.3, start=50.0, steps=5)
    assert above.tried[0] == (50.0, False) and len(above.tried) == 6
    assert above.peak <= 7.3 < above.failed and above.failed - above.peak <= 50.0 / 2**5
    capped = sweep(lambda rate: True, start=1.0, max_rate=100.0, steps=4)
    assert [r for r, _ in capped.tried] == [1, 2, 4, 8, 16, 32, 64, 100]
    assert capped.peak == 100.0 and capped.failed is None
    never = sweep(lambda rate: False, start=1.0, steps=3)
    assert never.peak is None and len(never.tried) == 4


class FakeServer:
    """Streams `max_tokens` one-character chunks, `step` seconds apart; holds a request whose
    prompt says "hang" until it is cancelled."""

    def __init__(self, step: float) -> None:
        self.step, self.open, self.peak, self.received = step, 0, 0, 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["stream"] is True and body["temperature"] == 0
        self.received += 1

        async def events():
            self.open += 1
            self.peak = max(self.peak, self.open)
            try:
                if "hang" in body["messages"][0]["content"]:
                    await asyncio.Event().wait()
                for _ in range(body["max_tokens"]):
                    await asyncio.sleep(self.step)
                    yield f'data: {json.dumps({"choices": [{"delta": {"content": "x"}}]})}\n\n'.encode()
                yield b"data: [DONE]\n\n"
            finally:
                self.open -= 1

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=events())


async def test_arrivals_do_not_wait_for_answers_and_the_unanswered_are_errors_after_the_drain() -> None:
    arrivals = schedule(40.0, seed=0, duration=None, num_requests=20, output_lens=(5, 10))
    hung = arrivals[3]
    hung.messages[0]["content"] = "hang"
    server = FakeServer(step=0.05)
    report = await run_open_loop("http://fake/v1", "fake", arrivals, len, drain_timeout=1.0,
                                 transport=httpx.MockTransport(server.handle))  # fmt: skip
    assert server.received == 20 and server.open == 0
    assert report.peak_in_flight > 3 and server.peak > 3  # each answer takes 0.25-0.5 s; arrivals kept coming
    assert [r.error for r in report.results].count(None) == 19
    assert report.results[3].error.startswith("unfinished")
    ok = report.ok
    assert [r.tokens for r in ok] == [a.max_tokens for a in arrivals if a is not hung]
    assert all(len(r.gaps) == r.tokens - 1 and r.latency >= r.ttft for r in ok)
    assert all(r.sent >= a.at for r, a in zip(report.results, arrivals))  # never early
    assert report.figures()["errors"] == 1
