"""The cost of the durable audit log: single-row predict with the audit on against off.

Two ``xserve serve`` servers run at once on loopback ports over the same demo
model: **audit-on** with the default store (SQLite, WAL, every commit fsynced
before the answer; a fresh file in a temporary folder) and **audit-off**
(``XSERVE_AUDIT_URL=none``). After checking that both answer every row of the
background sample alike, the script warms both up and measures them in
alternating rounds (the order flips every round) at each concurrency level.
The load generator is ``predict_vs_fastapi.py``'s. At the end the audit-on
server's log must verify and hold at least one record per measured request.

    .venv/bin/python bench/audit_overhead.py [--workers N] [--rounds R] ...

Results: a table on stdout and ``bench/results/audit_overhead.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import predict_vs_fastapi as pvf  # the shared load generator, beside this file

ON, OFF = "audit-on", "audit-off"
TARGETS = (ON, OFF)


@contextlib.contextmanager
def running(name: str, port: int, workers: int, env: dict[str, str]) -> Iterator[Path]:
    log = pvf.RESULTS_DIR / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            pvf.server_command("xserve", port, workers),
            cwd=pvf.REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield log
    finally:
        pvf.stop(proc, timeout=15)


async def check_alike(on: pvf.Target, off: pvf.Target) -> None:
    got = {t.name: await pvf.answers(t) for t in (on, off)}
    for i, (a, b) in enumerate(zip(got[ON], got[OFF], strict=True)):
        if (a["predictions"], a["probabilities"]) != (b["predictions"], b["probabilities"]):
            raise pvf.BenchError(f"row {i}: answers differ: {a} / {b}")
    for t in (on, off):
        t.expected = [(r["predictions"], r["probabilities"]) for r in got[t.name]]


async def bench(args: argparse.Namespace, on: pvf.Target, off: pvf.Target) -> list[pvf.Run]:
    levels = [int(c) for c in args.concurrency.split(",")]
    await check_alike(on, off)
    for c in levels:
        for t in (on, off):
            await pvf.load(t, c, args.max_requests, args.warmup, round_=-1)
    runs: list[pvf.Run] = []
    for r in range(args.rounds):
        order = (on, off) if r % 2 == 0 else (off, on)
        for c in levels:
            for t in order:
                run = await pvf.load(t, c, args.max_requests, args.duration, round_=r)
                runs.append(run)
                print(
                    f"round {r} c={c:<2} {t.name:<9} {run.throughput:8.0f} req/s "
                    f"p50 {run.p50_ms:6.3f} ms  p99 {run.p99_ms:6.3f} ms",
                    flush=True,
                )
    return runs


def summarize(runs: list[pvf.Run], levels: Sequence[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in levels:
        level: dict[str, Any] = {}
        for name in TARGETS:
            mine = [r for r in runs if r.target == name and r.concurrency == c]
            pooled = sorted(x for r in mine for x in r.latencies)
            level[name] = {
                "throughput_rps": statistics.median(r.throughput for r in mine),
                "p50_ms": pvf.percentile(pooled, 50) * 1e3,
                "p99_ms": pvf.percentile(pooled, 99) * 1e3,
                "requests": len(pooled),
            }
        paired = [
            a.throughput / b.throughput
            for a in runs
            for b in runs
            if a.target == ON
            and b.target == OFF
            and a.round == b.round
            and a.concurrency == b.concurrency == c
        ]
        level["ratio_on_over_off"] = {
            "throughput": level[ON]["throughput_rps"] / level[OFF]["throughput_rps"],
            "throughput_paired_median": statistics.median(paired),
            "p50": level[ON]["p50_ms"] / level[OFF]["p50_ms"],
            "p99": level[ON]["p99_ms"] / level[OFF]["p99_ms"],
        }
        out[str(c)] = level
    return out


def table(summary: dict[str, Any]) -> str:
    lines = [f"{'conc':>4}  {'target':<9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9}"]
    for c, level in summary.items():
        for name in TARGETS:
            s = level[name]
            lines.append(
                f"{c:>4}  {name:<9} {s['throughput_rps']:>8.0f} {s['p50_ms']:>8.3f} "
                f"{s['p99_ms']:>8.3f} {s['requests']:>9}"
            )
        r = level["ratio_on_over_off"]
        lines.append(
            f"{c:>4}  on/off: throughput {r['throughput']:.3f} (paired per round "
            f"{r['throughput_paired_median']:.3f}), p50 {r['p50']:.3f}, "
            f"p99 {r['p99']:.3f}"
        )
    return "\n".join(lines)


def audit_check(url: str, measured: int) -> dict[str, Any]:
    """The audit-on server's log verifies and holds every measured decision."""
    sys.path.insert(0, str(pvf.REPO))
    from xserve.audit import sink_from_url, verify_sink

    sink = sink_from_url(url)
    assert sink is not None
    with sink:
        verdict = verify_sink(sink)
    if not verdict.ok or verdict.records < measured:
        raise pvf.BenchError(f"audit log: {verdict.to_dict()}; {measured} requests measured")
    return {"records": verdict.records, "verified": verdict.ok}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--workers", type=int, default=1, help="server processes, for both (1)")
    p.add_argument("--rounds", type=int, default=5, help="measured rounds per target (5)")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated levels (1,8,32)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per run at most (3)")
    p.add_argument("--max-requests", type=int, default=20_000, help="requests per run at most")
    p.add_argument("--warmup", type=float, default=1.5, help="warm-up seconds per target & level")
    p.add_argument(
        "--audit-dir",
        type=Path,
        default=None,
        help="where audit-on's SQLite file goes (default: a temporary folder; "
        "/dev/shm shows the cost without the disk's fsync)",
    )
    p.add_argument("--out", type=Path, default=pvf.RESULTS_DIR / "audit_overhead.json")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    pvf.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    rows = pvf.load_rows(pvf.MODEL_VERSION_DIR / "background.csv")
    threads = pvf.thread_env(args.workers)
    base = {**os.environ, **threads, "XSERVE_MODELS_DIR": str(pvf.MODELS_DIR)}
    base.pop("XSERVE_API_KEYS", None)  # both open: measure the audit log alone
    on, off = pvf.Target(ON, pvf.free_port()), pvf.Target(OFF, pvf.free_port())
    for t in (on, off):
        t.requests = [pvf.request_bytes(t.port, row) for row in rows]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="xserve-audit-bench-", dir=args.audit_dir) as tmp:
        url = f"sqlite:///{Path(tmp) / 'audit.db'}"
        on_env = {**base, "XSERVE_AUDIT_URL": url}
        off_env = {**base, "XSERVE_AUDIT_URL": "none"}
        with (
            running(ON, on.port, args.workers, on_env) as on_log,
            running(OFF, off.port, args.workers, off_env) as off_log,
        ):

            async def go() -> list[pvf.Run]:
                await asyncio.gather(pvf.wait_ready(on, on_log), pvf.wait_ready(off, off_log))
                return await bench(args, on, off)

            try:
                with asyncio.Runner(loop_factory=pvf.loop_factory()) as runner:
                    runs = runner.run(go())
            except pvf.BenchError as exc:
                print(f"ABORTED: {exc}", file=sys.stderr)
                return 1
        try:
            audit = audit_check(url, sum(r.requests for r in runs if r.target == ON))
        except pvf.BenchError as exc:
            print(f"ABORTED: {exc}", file=sys.stderr)
            return 1

    summary = summarize(runs, levels)
    print(
        f"\nworkers={args.workers} threads/worker={threads['OMP_NUM_THREADS']} "
        f"rounds={args.rounds} run<= {args.duration}s/{args.max_requests} req "
        f"(req/s: median of rounds; p50/p99: all rounds pooled); audit log {audit}"
    )
    print(table(summary))
    result = {
        "benchmark": "audit_overhead",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "audit_dir": str(args.audit_dir or tempfile.gettempdir()),
            "model": pvf.MODEL,
            "workers": args.workers,
            "thread_env": threads,
            "rounds": args.rounds,
            "concurrency": levels,
            "duration_s": args.duration,
            "max_requests": args.max_requests,
            "warmup_s": args.warmup,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "versions": pvf.versions(),
        },
        "audit": audit,
        "summary": summary,
        "runs": [{k: v for k, v in asdict(r).items() if k != "latencies"} for r in runs],
        "wall_s": time.monotonic() - started,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
