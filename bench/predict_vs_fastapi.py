"""Predict-only, single-row requests: ``xserve serve`` against a hand-written FastAPI app.

Both servers run at once on loopback ports, with the same worker count and the
same native-thread pinning (``xserve.threads``). After checking that both give
the same answers for every row of the model's background sample, the script
warms both up, then measures them in interleaved rounds (the order flips every
round) at each concurrency level, so that drift on the machine hits both alike.

The load generator is a small asyncio client on raw streams (uvloop when
installed): one keep-alive HTTP/1.1 connection per concurrent caller, request
bytes built ahead of time, each run bounded by a request count and a duration.
Every response must be a 200 carrying the verified answer for its row, or the
run aborts.

    .venv/bin/python bench/predict_vs_fastapi.py [--workers N] [--rounds R] ...

Results: a table on stdout and ``bench/results/predict.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / "models"
MODEL = "credit-risk"
MODEL_VERSION_DIR = MODELS_DIR / MODEL / "1"
PATH = f"/v1/models/{MODEL}/predict"
RESULTS_DIR = REPO / "bench" / "results"
TARGETS = ("xserve", "baseline")
BASELINE_APP = "baseline_fastapi:app"
"""The baseline's uvicorn app, in ``bench/``."""


class BenchError(RuntimeError):
    """A failed check: the benchmark stops rather than report wrong figures."""


# -- the request rows ----------------------------------------------------------


def load_rows(path: Path) -> list[dict[str, int | float]]:
    """The background sample's rows, integers kept as JSON integers."""

    def number(text: str) -> int | float:
        try:
            return int(text)
        except ValueError:
            return float(text)

    with path.open(newline="") as f:
        return [{k: number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def request_bytes(port: int, row: dict[str, int | float], path: str = PATH) -> bytes:
    """A single-row predict request (instances as objects by feature name)."""
    return http_request(port, path, {"instances": [row]})


def http_request(port: int, path: str, payload: Any) -> bytes:
    """The whole HTTP/1.1 POST of ``payload`` as compact JSON."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode() + body


# -- a minimal keep-alive HTTP/1.1 client ----------------------------------------


class Connection:
    """One keep-alive connection; responses must carry a Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        start = head.lower().find(b"\r\ncontent-length:")
        if start < 0:
            raise BenchError(f"response without Content-Length: {head!r}")
        end = head.index(b"\r\n", start + 2)
        length = int(head[start + 17 : end])
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


# -- the servers ------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    requests: list[bytes] = field(default_factory=list)
    expected: list[tuple[Any, Any]] = field(default_factory=list)
    """Per row: the verified (predictions, probabilities) this server must answer."""


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Ask a process to stop; kill it if it has not within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def thread_env(workers: int) -> dict[str, str]:
    """The thread variables ``xserve serve --workers N`` sets, for both servers."""
    sys.path.insert(0, str(REPO))
    from xserve.settings import Settings
    from xserve.threads import THREAD_VARIABLES, threads_per_worker

    threads = threads_per_worker(Settings(), workers)
    env = {name: str(threads) for name in THREAD_VARIABLES}
    env["XSERVE_THREADS_PER_WORKER"] = str(threads)
    return env


def server_command(name: str, port: int, workers: int, app: str = BASELINE_APP) -> list[str]:
    """``xserve serve`` for the target ``xserve``; uvicorn serving ``app`` otherwise."""
    common = ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    if name == "xserve":
        return [sys.executable, "-m", "xserve.cli", "serve", *common, "--log-level", "warning"]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--app-dir",
        str(REPO / "bench"),
        *common,
        "--log-level",
        "warning",
        "--no-access-log",
    ]


@contextlib.contextmanager
def running(
    name: str,
    port: int,
    workers: int,
    env: dict[str, str],
    app: str = BASELINE_APP,
    log_name: str | None = None,
) -> Iterator[Path]:
    """Start one server; yield its log file; stop it (and its workers) on the way out.

    The log is ``bench/results/<log_name or name>.log``."""
    log = RESULTS_DIR / f"{log_name or name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            server_command(name, port, workers, app),
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield log
    finally:
        stop(proc, timeout=15)


async def wait_ready(target: Target, log: Path, timeout: float = 120.0) -> None:
    """Until a predict answers 200 (models loaded, all workers listening)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await Connection.open(target.port)
            try:
                status, _ = await conn.request(target.requests[0])
            finally:
                await conn.close()
            if status == 200:
                return
        except (OSError, asyncio.IncompleteReadError):
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"{target.name} not ready after {timeout:.0f}s:\n{log.read_text()}")
        await asyncio.sleep(0.2)


# -- checking the answers ------------------------------------------------------------


async def answers(target: Target) -> list[dict[str, Any]]:
    conn = await Connection.open(target.port)
    out = []
    try:
        for i, payload in enumerate(target.requests):
            status, body = await conn.request(payload)
            if status != 200:
                raise BenchError(f"{target.name} row {i}: HTTP {status}: {body[:300]!r}")
            out.append(json.loads(body))
    finally:
        await conn.close()
    return out


def _close(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y)
        and all(math.isclose(u, v, rel_tol=1e-9, abs_tol=1e-12) for u, v in zip(x, y, strict=True))
        for x, y in zip(a, b, strict=True)
    )


async def verify(xserve: Target, baseline: Target) -> None:
    """Both servers answer every row alike; record each one's answers for the load runs."""
    got = {t.name: await answers(t) for t in (xserve, baseline)}
    for i, (a, b) in enumerate(zip(got["xserve"], got["baseline"], strict=True)):
        for key in ("model", "version", "request_id", "predictions", "probabilities"):
            if key not in a or key not in b:
                raise BenchError(f"row {i}: '{key}' missing: xserve {a} / baseline {b}")
        if a["predictions"] != b["predictions"] or not _close(
            a["probabilities"], b["probabilities"]
        ):
            raise BenchError(f"row {i}: answers differ: xserve {a} / baseline {b}")
    for t in (xserve, baseline):
        t.expected = [(r["predictions"], r["probabilities"]) for r in got[t.name]]


# -- load ----------------------------------------------------------------------------


@dataclass
class Run:
    target: str
    concurrency: int
    round: int
    requests: int
    seconds: float
    throughput: float
    p50_ms: float
    p99_ms: float
    latencies: list[float] = field(repr=False)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


Check = Callable[[Target, int, int, bytes], None]
"""Called with (target, row, HTTP status, body) for every response of a load run; raises
BenchError to abort."""


def check_answer(target: Target, row: int, status: int, body: bytes) -> None:
    """A 200 carrying the verified predictions and probabilities of ``row``."""
    if status != 200:
        raise BenchError(f"{target.name}: HTTP {status}: {body[:300]!r}")
    answer = json.loads(body)
    if (answer["predictions"], answer["probabilities"]) != target.expected[row]:
        raise BenchError(f"{target.name} row {row}: answer changed: {answer}")


async def load(
    target: Target,
    concurrency: int,
    max_requests: int,
    duration: float,
    round_: int,
    check: Check = check_answer,
) -> Run:
    """``concurrency`` callers in closed loop until ``max_requests`` or ``duration``."""
    conns = [await Connection.open(target.port) for _ in range(concurrency)]
    latencies: list[float] = []
    n_rows = len(target.requests)
    issued = 0
    clock = time.perf_counter
    deadline = clock() + duration

    async def caller(conn: Connection) -> None:
        nonlocal issued
        while issued < max_requests and clock() < deadline:
            row = issued % n_rows
            issued += 1
            t0 = clock()
            status, body = await conn.request(target.requests[row])
            latencies.append(clock() - t0)
            check(target, row, status, body)

    start = clock()
    try:
        await asyncio.gather(*(caller(c) for c in conns))
        seconds = clock() - start
    finally:
        for c in conns:
            await c.close()
    ordered = sorted(latencies)
    return Run(
        target=target.name,
        concurrency=concurrency,
        round=round_,
        requests=len(latencies),
        seconds=seconds,
        throughput=len(latencies) / seconds,
        p50_ms=percentile(ordered, 50) * 1e3,
        p99_ms=percentile(ordered, 99) * 1e3,
        latencies=latencies,
    )


# -- summary ---------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summarize(runs: list[Run], levels: Sequence[int]) -> dict[str, Any]:
    """Per target and level: median throughput over rounds, pooled latency percentiles."""
    out: dict[str, Any] = {}
    for c in levels:
        level: dict[str, Any] = {}
        for name in TARGETS:
            mine = [r for r in runs if r.target == name and r.concurrency == c]
            pooled = sorted(x for r in mine for x in r.latencies)
            level[name] = {
                "throughput_rps": median([r.throughput for r in mine]),
                "throughput_min_rps": min(r.throughput for r in mine),
                "throughput_max_rps": max(r.throughput for r in mine),
                "p50_ms": percentile(pooled, 50) * 1e3,
                "p99_ms": percentile(pooled, 99) * 1e3,
                "requests": len(pooled),
            }
        x, b = level["xserve"], level["baseline"]
        paired = [
            xr.throughput / br.throughput
            for xr in runs
            for br in runs
            if xr.target == "xserve"
            and br.target == "baseline"
            and xr.concurrency == br.concurrency == c
            and xr.round == br.round
        ]
        level["ratio_xserve_over_baseline"] = {
            "throughput": x["throughput_rps"] / b["throughput_rps"],
            "throughput_paired_median": median(paired),
            "p50": x["p50_ms"] / b["p50_ms"],
            "p99": x["p99_ms"] / b["p99_ms"],
        }
        out[str(c)] = level
    return out


def table(summary: dict[str, Any]) -> str:
    lines = [
        f"{'conc':>4}  {'target':<9} {'req/s':>8} {'(min-max)':>15} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'requests':>9}"
    ]
    for c, level in summary.items():
        for name in TARGETS:
            s = level[name]
            spread = f"{s['throughput_min_rps']:.0f}-{s['throughput_max_rps']:.0f}"
            lines.append(
                f"{c:>4}  {name:<9} {s['throughput_rps']:>8.0f} {spread:>15} "
                f"{s['p50_ms']:>8.3f} {s['p99_ms']:>8.3f} {s['requests']:>9}"
            )
        r = level["ratio_xserve_over_baseline"]
        lines.append(
            f"{c:>4}  xserve/baseline: throughput {r['throughput']:.3f} "
            f"(paired per round {r['throughput_paired_median']:.3f}), "
            f"p50 {r['p50']:.3f}, p99 {r['p99']:.3f}"
        )
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--workers", type=int, default=1, help="server processes, for both (1)")
    p.add_argument("--rounds", type=int, default=5, help="measured rounds per target (5)")
    p.add_argument("--concurrency", default="1,8", help="comma-separated levels (1,8)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per run at most (3)")
    p.add_argument("--max-requests", type=int, default=20_000, help="requests per run at most")
    p.add_argument("--warmup", type=float, default=1.5, help="warm-up seconds per target & level")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "predict.json")
    return p.parse_args(argv)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed: less client overhead on a machine the servers share."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("xserve", "litestar", "fastapi", "pydantic", "uvicorn", "xgboost", "numpy"):
        with contextlib.suppress(Exception):
            out[name] = package_version(name)
    return out


async def bench(args: argparse.Namespace, xserve: Target, baseline: Target) -> list[Run]:
    levels = [int(c) for c in args.concurrency.split(",")]
    print(f"verifying {len(xserve.requests)} rows against both servers...", flush=True)
    await verify(xserve, baseline)
    for c in levels:
        for t in (xserve, baseline):
            await load(t, c, args.max_requests, args.warmup, round_=-1)
    runs: list[Run] = []
    for r in range(args.rounds):
        order = (xserve, baseline) if r % 2 == 0 else (baseline, xserve)
        for c in levels:
            for t in order:
                run = await load(t, c, args.max_requests, args.duration, round_=r)
                runs.append(run)
                print(
                    f"round {r} c={c:<2} {t.name:<9} {run.throughput:8.0f} req/s "
                    f"p50 {run.p50_ms:6.3f} ms  p99 {run.p99_ms:6.3f} ms",
                    flush=True,
                )
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    rows = load_rows(MODEL_VERSION_DIR / "background.csv")
    threads = thread_env(args.workers)
    env = {**os.environ, **threads, "XSERVE_MODELS_DIR": str(MODELS_DIR)}
    # The baseline records nothing: by default xserve runs without its audit log too
    # (audit_overhead.py measures what the log costs). Set XSERVE_AUDIT_URL to keep it.
    env.setdefault("XSERVE_AUDIT_URL", "none")
    env["BASELINE_MODEL"] = str(MODEL_VERSION_DIR / "model.json")
    xserve, baseline = (Target(name, free_port()) for name in TARGETS)
    for t in (xserve, baseline):
        t.requests = [request_bytes(t.port, row) for row in rows]

    load_before = os.getloadavg()
    if load_before[0] > 1.0:
        print(
            f"warning: load average {load_before[0]:.2f} before start: "
            "other work on the machine makes the figures noisy",
            file=sys.stderr,
        )
    started = time.monotonic()
    with (
        running("xserve", xserve.port, args.workers, env) as xlog,
        running("baseline", baseline.port, args.workers, env) as blog,
    ):

        async def go() -> list[Run]:
            await asyncio.gather(wait_ready(xserve, xlog), wait_ready(baseline, blog))
            return await bench(args, xserve, baseline)

        try:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                runs = runner.run(go())
        except BenchError as exc:
            print(f"ABORTED: {exc}", file=sys.stderr)
            return 1

    summary = summarize(runs, levels)
    print()
    print(
        f"workers={args.workers} threads/worker={threads['OMP_NUM_THREADS']} "
        f"rounds={args.rounds} run<= {args.duration}s/{args.max_requests} req "
        f"(req/s: median of rounds; p50/p99: all rounds pooled)"
    )
    print(table(summary))
    result = {
        "benchmark": "predict_vs_fastapi",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "model": MODEL,
            "workers": args.workers,
            "thread_env": threads,
            "xserve_env": {k: v for k, v in env.items() if k.startswith("XSERVE_")},
            "rounds": args.rounds,
            "concurrency": levels,
            "duration_s": args.duration,
            "max_requests": args.max_requests,
            "warmup_s": args.warmup,
            "rows": len(rows),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "versions": versions(),
        },
        "summary": summary,
        "runs": [{k: v for k, v in asdict(r).items() if k != "latencies"} for r in runs],
        "wall_s": time.monotonic() - started,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
