"""Open-loop benchmark: `python -m bench --request-rate R` (or `--sweep`).

Requests arrive as a Poisson process (exponential inter-arrival times of mean 1/R, as
`vllm bench serve --request-rate` sends them) whatever the server does: an arrival never waits
for an earlier response.  Prompts and output lengths are mixed, drawn from `--seed`: a task and
the first 5-310 words of a topic's paragraph, repeated as needed (about 20 to 400 prompt tokens),
and max_tokens from `--output-lens`; temperature 0, streaming chat completions.

Reported per run: output tokens/s and completed requests/s over the run (first send to last
answer), TTFT p50/p90/p99, inter-token latency (gaps between content chunks, over every request)
p50/p95/p99, end-to-end latency p50/p99, errors (requests still unanswered after the drain
timeout count as errors), and goodput: the requests/s, and the fraction of requests sent, that
met the SLO (TTFT <= --slo-ttft-ms and the request's own ITL p95 <= --slo-itl-ms).  `--sweep`
finds the highest rate whose SLO fraction is >= --slo-fraction (doubling from the start rate,
then bisecting) and runs once more at 70 % of that peak.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from bench.load import percentile, stream_chat

# One paragraph per topic (about 35 words); a prompt takes its first N words, the paragraph repeated as needed.
TOPICS = {
    "lighthouse": "The old lighthouse keeper climbed the spiral stairs every evening, wound the clockwork, trimmed "
                  "the wick and watched the ships pass the rocks until the sun came up again over the bay.",
    "bread": "To bake a simple loaf, mix flour, water, salt and yeast, knead the dough until it is smooth, let it "
             "rise for an hour, shape it, let it rise again and bake it in a very hot oven.",
    "rivers": "Rivers carve valleys over millions of years, carrying sand and stones downstream, depositing them in "
              "wide plains and deltas where farmers later grow rice, wheat and many kinds of vegetables.",
    "trains": "The night train left the capital at nine, crossed the mountains by midnight through long tunnels and "
              "reached the coast at dawn, where passengers stepped out into the smell of salt and fish.",
    "bees": "A colony of honey bees has one queen, thousands of workers and a few hundred drones; the workers "
            "collect nectar and pollen, build wax combs, feed the larvae and guard the entrance of the hive.",
    "chess": "In chess each player starts with sixteen pieces; the aim is to checkmate the opposing king, and a good "
             "opening develops the knights and bishops early, controls the centre and castles the king to safety.",
}  # fmt: skip
TASKS = ["Summarize the following text.", "Continue the following text.", "List the key facts in this text.",
         "Explain the following text to a child."]  # fmt: skip
TARGET_FRACTION = 0.7  # --sweep also runs at 70 % of the peak, where the target is:
TARGET_TTFT_P50, TARGET_TTFT_P99 = 0.25, 1.0  # TTFT p50 <= 250 ms, p99 <= 1 s


@dataclass(frozen=True)
class Arrival:
    at: float  # seconds after the run's start
    messages: list[dict[str, str]]
    max_tokens: int


def schedule(rate: float, seed: int = 0, duration: float | None = 60.0, num_requests: int | None = None,
             output_lens: tuple[int, int] = (16, 128),
             prompt_words: tuple[int, int] = (5, 310)) -> list[Arrival]:  # fmt: skip
    """Poisson arrivals at `rate` per second, the first at 0 (as vLLM's benchmark sends them), until
    `duration` seconds or `num_requests` requests, whichever comes first (one of them must be set).  The times come from one generator
    and the prompts and lengths from another, both seeded: the same seed gives the same schedule,
    and changing a length range leaves the arrival times alone."""
    if rate <= 0 or (duration is None and num_requests is None):
        raise ValueError("a schedule needs a positive rate and a duration or a number of requests")
    times, lengths = random.Random(seed), random.Random(f"lengths-{seed}")
    arrivals: list[Arrival] = []
    at = 0.0
    while num_requests is None or len(arrivals) < num_requests:
        if arrivals:
            at += times.expovariate(rate)
        if duration is not None and at >= duration:
            break
        topic, task = lengths.choice(sorted(TOPICS)), lengths.choice(TASKS)
        words = TOPICS[topic].split()
        text = " ".join(words[k % len(words)] for k in range(lengths.randint(*prompt_words)))
        content = f"(request {len(arrivals)}) {task}\n\n{text}"
        arrivals.append(Arrival(at, [{"role": "user", "content": content}], lengths.randint(*output_lens)))
    return arrivals


@dataclass(frozen=True)
class SLO:
    ttft: float = 1.0  # seconds
    itl: float = 0.2  # seconds: bound on each request's own inter-token p95

    def met(self, r: RequestResult) -> bool:
        return (r.error is None and r.ttft is not None and r.ttft <= self.ttft
                and (not r.gaps or percentile(r.gaps, 95) <= self.itl))  # fmt: skip


@dataclass
class RequestResult:
    sent: float = float("nan")  # seconds after the start, when it was sent
    lag: float = 0.0  # how much later than scheduled it was sent (the client falling behind)
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    latency: float | None = None  # end to end
    tokens: int = 0
    error: str | None = None


@dataclass
class RunReport:
    rate: float
    results: list[RequestResult]
    seconds: float  # from the start to the last answer (or the end of the drain)
    arrival_seconds: float  # from the start to the last send
    peak_in_flight: int
    slo: SLO = field(default_factory=SLO)

    @property
    def ok(self) -> list[RequestResult]:
        return [r for r in self.results if r.error is None]

    @property
    def errors(self) -> int:
        return len(self.results) - len(self.ok)

    @property
    def tokens_per_s(self) -> float:
        return sum(r.tokens for r in self.ok) / self.seconds if self.seconds else 0.0

    @property
    def requests_per_s(self) -> float:
        return len(self.ok) / self.seconds if self.seconds else 0.0

    @property
    def good(self) -> int:
        return sum(1 for r in self.results if self.slo.met(r))

    @property
    def goodput(self) -> float:
        return self.good / self.seconds if self.seconds else 0.0

    @property
    def good_fraction(self) -> float:
        return self.good / len(self.results) if self.results else 0.0

    def meets(self, fraction: float) -> bool:
        return bool(self.results) and self.good_fraction >= fraction

    def figures(self) -> dict[str, float]:
        """The summary: counts, rates and percentiles (seconds), as the table and --json show them."""
        ok = self.ok
        ttfts, latencies = [r.ttft for r in ok], [r.latency for r in ok]
        gaps = [g for r in ok for g in r.gaps]
        figures = {"rate": self.rate, "sent": len(self.results), "completed": len(ok), "errors": self.errors,
                   "seconds": self.seconds, "arrival_seconds": self.arrival_seconds,
                   "peak_in_flight": self.peak_in_flight, "output_tokens": sum(r.tokens for r in ok),
                   "tokens_per_s": self.tokens_per_s, "requests_per_s": self.requests_per_s,
                   "good": self.good, "goodput": self.goodput, "good_fraction": self.good_fraction,
                   "send_lag_max": max((r.lag for r in self.results), default=0.0)}  # fmt: skip
        for q in (50, 90, 99):
            figures[f"ttft_p{q}"] = percentile(ttfts, q)
        for q in (50, 95, 99):
            figures[f"itl_p{q}"] = percentile(gaps, q)
        for q in (50, 99):
            figures[f"e2e_p{q}"] = percentile(latencies, q)
        return figures


async def run_open_loop(url: str, model: str, arrivals: list[Arrival], count: Callable[[str], int],
                        drain_timeout: float = 120.0, rate: float = float("nan"), slo: SLO | None = None,
                        transport: httpx.AsyncBaseTransport | None = None) -> RunReport:  # fmt: skip
    """Send each arrival at its time, without waiting for earlier answers; after the last one,
    wait up to `drain_timeout` seconds for the requests in flight, then cancel the rest (errors).
    `transport` replaces the network (tests)."""
    results = [RequestResult() for _ in arrivals]
    in_flight, peak, last_done = 0, 0, 0.0
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)  # no pool wait: open loop
    timeout = httpx.Timeout(drain_timeout + 60, connect=30)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport) as client:
        start = time.perf_counter()

        async def one(arrival: Arrival, r: RequestResult) -> None:
            nonlocal in_flight, peak, last_done
            body = {"model": model, "messages": arrival.messages, "stream": True, "temperature": 0,
                    "max_tokens": arrival.max_tokens}  # fmt: skip
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                answer = await stream_chat(client, url, body)
                r.latency = time.perf_counter() - start - r.sent
                r.ttft, r.gaps, r.tokens = answer.ttft, answer.gaps, count(answer.text)
            except Exception as exc:  # noqa: BLE001 - every failure is one error in the report
                r.error = f"{type(exc).__name__}: {exc}"[:200]
            finally:
                in_flight -= 1
                last_done = time.perf_counter() - start

        tasks = []
        for arrival, r in zip(arrivals, results):
            delay = start + arrival.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            r.sent = time.perf_counter() - start
            r.lag = r.sent - arrival.at
            tasks.append(asyncio.create_task(one(arrival, r)))
        arrival_seconds = time.perf_counter() - start
        pending: set[asyncio.Task] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=drain_timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        seconds = time.perf_counter() - start if pending else max(last_done, arrival_seconds)
    for r in results:
        if r.error is None and r.latency is None:
            r.error = f"unfinished after the {drain_timeout:g} s drain"
    return RunReport(rate, results, seconds, arrival_seconds, peak, slo or SLO())


@dataclass
class SweepResult:
    tried: list[tuple[float, bool]]  # (rate, met the SLO) in the order tried
    peak: float | None  # the highest rate that met it (None: not even the lowest tried)
    failed: float | None  # the lowest rate that failed (None: capped at max_rate while passing)


def sweep(passes: Callable[[float], bool], start: float = 1.0, max_rate: float = 256.0,
          steps: int = 4) -> SweepResult:  # fmt: skip
    """The highest rate at which `passes(rate)` holds, assuming it holds below some rate and fails
    above: double from `start` (never past `max_rate`) until it fails, then bisect `steps` times
    between the last pass and the first fail.  At most log2(max_rate/start) + 1 + steps calls; the
    peak is within (fail - pass) / 2**steps of the true one."""
    tried: list[tuple[float, bool]] = []

    def check(rate: float) -> bool:
        ok = passes(rate)
        tried.append((rate, ok))
        return ok

    lo, hi, rate = 0.0, None, min(start, max_rate)
    while hi is None:
        if not check(rate):
            hi = rate
        elif rate >= max_rate:
            return SweepResult(tried, rate, None)
        else:
            lo, rate = rate, min(rate * 2, max_rate)
    for _ in range(steps):
        mid = (lo + hi) / 2
        if check(mid):
            lo = mid
        else:
            hi = mid
    return SweepResult(tried, lo or None, hi)


HEADER = ("| rate req/s | sent | done | err | out tok/s | done req/s | goodput req/s | SLO met "
          "| TTFT p50 | p90 | p99 ms | ITL p50 | p95 | p99 ms | E2E p50 | p99 ms |\n" + "|---:" * 16 + "|")  # fmt: skip


def row(report: RunReport, label: str | None = None) -> str:
    f = report.figures()
    ms = lambda key, digits=0: f"{f[key] * 1000:.{digits}f}"  # noqa: E731
    return (f"| {label or f'{report.rate:.2f}'} | {f['sent']} | {f['completed']} | {f['errors']} "
            f"| {f['tokens_per_s']:.1f} | {f['requests_per_s']:.2f} | {f['goodput']:.2f} | {f['good_fraction']:.0%} "
            f"| {ms('ttft_p50')} | {ms('ttft_p90')} | {ms('ttft_p99')} | {ms('itl_p50', 1)} | {ms('itl_p95', 1)} "
            f"| {ms('itl_p99', 1)} | {ms('e2e_p50')} | {ms('e2e_p99')} |")  # fmt: skip


def _range(text: str) -> tuple[int, int]:
    low, _, high = text.partition(":")
    lo, hi = int(low), int(high or low)
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW:HIGH with 1 <= LOW <= HIGH")
    return lo, hi


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("open loop (Poisson arrivals: --request-rate or --sweep)")
    add = group.add_argument
    add("--request-rate", type=float, help="requests/s, open loop; with --sweep, the rate to start from (default 1)")
    add("--duration", type=float, help="seconds of arrivals (default 60, unless only --num-requests is given)")
    add("--num-requests", type=int, help="stop arrivals after this many (with --duration: whichever comes first)")
    add("--seed", type=int, default=0, help="seeds the arrival times, prompts and output lengths (default 0)")
    add("--output-lens", type=_range, default=(16, 128), metavar="LOW:HIGH",
        help="max_tokens of each request, drawn uniformly from LOW..HIGH (default 16:128)")
    add("--drain-timeout", type=float, default=120.0,
        help="seconds to wait for requests in flight after the last arrival; unfinished ones count as errors")
    add("--slo-ttft-ms", type=float, default=1000.0, help="per-request SLO: time to first token (default 1000)")
    add("--slo-itl-ms", type=float, default=200.0, help="per-request SLO: the request's own ITL p95 (default 200)")
    add("--slo-fraction", type=float, default=0.9, help="a rate meets the SLO when this share of requests does")
    add("--sweep", action="store_true", help="find the highest rate that meets the SLO, then run at 70%% of it")
    add("--sweep-steps", type=int, default=4, help="--sweep: bisection runs after the doubling (default 4)")
    add("--max-rate", type=float, default=256.0, help="--sweep: the highest rate tried (default 256)")
    add("--slots", type=int, default=64, help="--echo: the echo model's batch slots in the open loop (default 64)")
    add("--json", type=Path, help="also write every run's figures (seconds) to this file")


def _title(args: argparse.Namespace, url: str, model: str) -> str:
    what = "sweep" if args.sweep else f"rate {args.request_rate:g} req/s"
    limits = ([f"{args.duration:g} s of arrivals"] if args.duration is not None else []) + (
        [f"at most {args.num_requests} requests"] if args.num_requests else [])
    slo = f"SLO: TTFT <= {args.slo_ttft_ms:g} ms and the request's ITL p95 <= {args.slo_itl_ms:g} ms"
    if args.sweep:
        slo += f", met by >= {args.slo_fraction:.0%} of requests"
    low, high = args.output_lens
    return (f"### open loop, {datetime.date.today().isoformat()}: {model} at {url}, {what} (Poisson), "
            f"seed {args.seed}, {' and '.join(limits)}, max_tokens {low}:{high}; {slo}")


def _verdict(found: SweepResult, at_target: RunReport | None, max_rate: float) -> str:
    if found.peak is None or at_target is None:
        return f"peak: none; the lowest rate tried ({min(r for r, _ in found.tried):.2f} req/s) misses the SLO"
    f = at_target.figures()
    met = f["ttft_p50"] <= TARGET_TTFT_P50 and f["ttft_p99"] <= TARGET_TTFT_P99
    above = f"capped by --max-rate {max_rate:g}" if found.failed is None else f"{found.failed:.2f} does not"
    return (f"peak: {found.peak:.2f} req/s meets the SLO ({above}). At 70 % of the peak "
            f"({at_target.rate:.2f} req/s) the target TTFT p50 <= 250 ms and p99 <= 1 s is "
            f"{'met' if met else 'missed'}: p50 {f['ttft_p50'] * 1000:.0f} ms, p99 {f['ttft_p99'] * 1000:.0f} ms")


def bench_openloop(args: argparse.Namespace, url: str, model: str, count: Callable[[str], int]) -> list[RunReport]:
    """The runs `args` ask for against `url`: a table row per run (and the sweep's verdict)."""
    if args.duration is None and args.num_requests is None:
        args.duration = 60.0
    slo = SLO(args.slo_ttft_ms / 1000, args.slo_itl_ms / 1000)
    runs: list[RunReport] = []

    def measure(rate: float, label: str | None = None) -> RunReport:
        arrivals = schedule(rate, args.seed, args.duration, args.num_requests, args.output_lens)
        if runs:
            time.sleep(1.0)  # requests the previous run's drain cancelled leave the server
        report = asyncio.run(run_open_loop(url, model, arrivals, count, args.drain_timeout, rate, slo))
        runs.append(report)
        print(row(report, label), flush=True)
        for error in sorted({r.error for r in report.results if r.error})[:3]:
            print(f"<!-- error: {error} -->", flush=True)
        lag = report.figures()["send_lag_max"]
        if lag > 0.1:
            print(f"<!-- the client sent a request {lag * 1000:.0f} ms late: it may limit this rate -->", flush=True)
        return report

    print(f"\n{_title(args, url, model)}\n\n{HEADER}", flush=True)
    found = None
    if args.sweep:
        found = sweep(lambda rate: measure(rate).meets(args.slo_fraction), args.request_rate or 1.0, args.max_rate,
                      args.sweep_steps)  # fmt: skip
        at_target = None
        if found.peak is not None:
            rate = TARGET_FRACTION * found.peak
            at_target = measure(rate, f"0.7 × {found.peak:.2f} = {rate:.2f}")
        print(f"\n{_verdict(found, at_target, args.max_rate)}", flush=True)
    else:
        measure(args.request_rate)
    if args.json:
        summary = {"seed": args.seed, "slo": asdict(slo), "slo_fraction": args.slo_fraction,
                   "runs": [r.figures() for r in runs], "sweep": asdict(found) if found else None}  # fmt: skip
        args.json.write_text(json.dumps(summary, indent=2))
    return runs
