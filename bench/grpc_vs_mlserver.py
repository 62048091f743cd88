"""Single-row gRPC inference: xserve's ``inference.GRPCInferenceService`` against Seldon
MLServer's, on the same XGBoost model, in one run.

MLServer runs from its own virtual environment (it is not one of xserve's dependencies)::

    python3 -m venv /tmp/mlserver-venv
    /tmp/mlserver-venv/bin/pip install mlserver mlserver-xgboost
    .venv/bin/python bench/grpc_vs_mlserver.py [--mlserver /tmp/mlserver-venv/bin/mlserver]

Both servers load ``models/credit-risk/1/model.json`` (8 features, binary:logistic).
MLServer's XGBoost runtime loads it as a regressor, whose ``predict`` output is the
probability of class 1 (FP32); xserve is asked for its ``probabilities`` output only, so
each answer carries one tensor. xserve runs without its audit log (``XSERVE_AUDIT_URL=none``
unless set: MLServer records nothing) and without keys; MLServer runs without its metrics
(``metrics_endpoint: null``; xserve counts its gRPC calls in /metrics, a cost it pays here) and, for
one worker, without its parallel inference pool (``parallel_workers: 0``). xserve gets the
native-thread variables ``xserve serve --workers N`` sets; MLServer one native thread
(``--mlserver-threads``) and ``OMP_WAIT_POLICY=PASSIVE``, its fastest settings here.

After checking that both answer every row of the model's background sample alike (to
float32 precision), the script warms both up and measures them in interleaved rounds (the
order flips every round), for each tensor form (typed ``contents`` and
``raw_input_contents``) and concurrency level. Each concurrent caller has its own channel
(one HTTP/2 connection) on a grpc.aio client, sends pre-serialized requests and checks every
answer against the verified value for its row.

Results: a table on stdout and ``bench/results/grpc.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
from predict_vs_fastapi import (
    MODEL,
    MODEL_VERSION_DIR,
    REPO,
    RESULTS_DIR,
    BenchError,
    free_port,
    median,
    percentile,
    stop,
    thread_env,
)

sys.path.insert(0, str(REPO))
from xserve.grpc.proto import grpc_predict_v2_pb2 as pb

TARGETS = ("xserve", "mlserver")
FORMS = ("typed", "raw")
INFER = "/inference.GRPCInferenceService/ModelInfer"
READY = "/inference.GRPCInferenceService/ModelReady"


@dataclass
class Target:
    name: str
    port: int
    output: str
    """The output asked for (xserve) or answered by default (MLServer)."""
    column: int
    """The column of that output holding P(class 1)."""
    requests: dict[str, list[bytes]] = field(default_factory=dict)
    """Serialized requests per tensor form, one per row."""
    expected: list[float] = field(default_factory=list)


def _request(target: Target, row: np.ndarray[Any, Any], form: str) -> bytes:
    request = pb.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[1, len(row)])
    if form == "raw":
        request.raw_input_contents.append(row.astype("<f8").tobytes())
    else:
        tensor.contents.fp64_contents.extend(row.tolist())
    if target.name == "xserve":
        request.outputs.add(name=target.output)
    return request.SerializeToString()


def value(target: Target, answer: bytes) -> float:
    """P(class 1) in a serialized answer, typed or raw."""
    response = pb.ModelInferResponse.FromString(answer)
    out = next(o for o in response.outputs if o.name == target.output)
    if response.raw_output_contents:
        dtype = "<f8" if out.datatype == "FP64" else "<f4"
        return float(np.frombuffer(response.raw_output_contents[0], dtype=dtype)[target.column])
    contents = out.contents.fp64_contents if out.datatype == "FP64" else out.contents.fp32_contents
    return float(contents[target.column])


# -- the two servers -----------------------------------------------------------------


def _xserve_models(root: Path) -> Path:
    folder = root / "xserve-models" / MODEL / "1"
    folder.mkdir(parents=True)
    for name in ("xserve.yaml", "model.json", "background.csv"):
        shutil.copy2(MODEL_VERSION_DIR / name, folder / name)
    return folder.parents[1]


def _mlserver_models(root: Path, http: int, grpc_port: int, workers: int) -> Path:
    folder = root / "mlserver-models"
    (folder / MODEL).mkdir(parents=True)
    shutil.copy2(MODEL_VERSION_DIR / "model.json", folder / MODEL / "model.json")
    settings = {
        "host": "127.0.0.1",
        "http_port": http,
        "grpc_port": grpc_port,
        "metrics_endpoint": None,
        "parallel_workers": 0 if workers == 1 else workers,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model = {
        "name": MODEL,
        "implementation": "mlserver_xgboost.XGBoostModel",
        "parameters": {"uri": "./model.json", "version": "1"},
    }
    (folder / MODEL / "model-settings.json").write_text(json.dumps(model))
    return folder


@contextlib.contextmanager
def started(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        stop(proc, timeout=15)


async def wait_ready(target: Target, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    request = pb.ModelReadyRequest(name=MODEL).SerializeToString()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{target.port}") as channel:
        call = channel.unary_unary(READY)
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.RpcError):
                if pb.ModelReadyResponse.FromString(await call(request, timeout=2)).ready:
                    return
            await asyncio.sleep(0.3)
    raise BenchError(f"{target.name} did not become ready; see {log}")


async def verify(targets: Sequence[Target]) -> None:
    """Every row, every form: both servers give P(class 1) alike (MLServer: float32)."""
    for t in targets:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{t.port}") as channel:
            call = channel.unary_unary(INFER)
            for form in FORMS:
                got = [value(t, await call(r)) for r in t.requests[form]]
                if form == FORMS[0]:
                    t.expected = got
                elif got != t.expected:
                    raise BenchError(f"{t.name}: typed and raw answers differ")
    a, b = targets
    if not np.allclose(a.expected, b.expected, rtol=1e-6, atol=1e-7):
        raise BenchError(f"{a.name} and {b.name} disagree on P(class 1)")


# -- load ------------------------------------------------------------------------------


@dataclass
class Run:
    target: str
    form: str
    concurrency: int
    round: int
    requests: int
    seconds: float
    throughput: float
    p50_ms: float
    p99_ms: float
    latencies: list[float] = field(repr=False)


async def load(
    target: Target, form: str, concurrency: int, max_requests: int, duration: float, round_: int
) -> Run:
    requests = target.requests[form]
    latencies: list[float] = []
    deadline = time.perf_counter() + duration

    async def caller(first: int) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own
        async with grpc.aio.insecure_channel(f"127.0.0.1:{target.port}", options) as channel:
            call = channel.unary_unary(INFER)
            i = first
            while len(latencies) < max_requests and time.perf_counter() < deadline:
                row = i % len(requests)
                t0 = time.perf_counter()
                answer = await call(requests[row])
                latencies.append(time.perf_counter() - t0)
                if abs(value(target, answer) - target.expected[row]) > 1e-12:
                    raise BenchError(f"{target.name}: a wrong answer for row {row}")
                i += concurrency

    start = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(concurrency)))
    seconds = time.perf_counter() - start
    ordered = sorted(latencies)
    return Run(
        target.name,
        form,
        concurrency,
        round_,
        len(latencies),
        seconds,
        len(latencies) / seconds,
        percentile(ordered, 50) * 1e3,
        percentile(ordered, 99) * 1e3,
        latencies,
    )


def summarize(runs: list[Run], levels: Sequence[tuple[str, int]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for form, c in levels:
        level: dict[str, Any] = {}
        for name in TARGETS:
            mine = [r for r in runs if (r.target, r.form, r.concurrency) == (name, form, c)]
            pooled = sorted(x for r in mine for x in r.latencies)
            level[name] = {
                "throughput_rps": median([r.throughput for r in mine]),
                "throughput_min_rps": min(r.throughput for r in mine),
                "throughput_max_rps": max(r.throughput for r in mine),
                "p50_ms": percentile(pooled, 50) * 1e3,
                "p99_ms": percentile(pooled, 99) * 1e3,
                "requests": len(pooled),
            }
        paired = [
            x.throughput / m.throughput
            for x in runs
            for m in runs
            if (x.target, m.target) == TARGETS
            and x.form == m.form == form
            and x.concurrency == m.concurrency == c
            and x.round == m.round
        ]
        x, m = level["xserve"], level["mlserver"]
        level["ratio_xserve_over_mlserver"] = {
            "throughput": x["throughput_rps"] / m["throughput_rps"],
            "throughput_paired_median": median(paired),
            "p50": x["p50_ms"] / m["p50_ms"],
            "p99": x["p99_ms"] / m["p99_ms"],
        }
        out[f"{form}/{c}"] = level
    return out


def table(summary: dict[str, Any]) -> str:
    lines = [
        f"{'form/conc':>9}  {'target':<9} {'req/s':>8} {'(min-max)':>15} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'requests':>9}"
    ]
    for key, level in summary.items():
        for name in TARGETS:
            s = level[name]
            spread = f"{s['throughput_min_rps']:.0f}-{s['throughput_max_rps']:.0f}"
            lines.append(
                f"{key:>9}  {name:<9} {s['throughput_rps']:>8.0f} {spread:>15} "
                f"{s['p50_ms']:>8.3f} {s['p99_ms']:>8.3f} {s['requests']:>9}"
            )
        r = level["ratio_xserve_over_mlserver"]
        lines.append(
            f"{key:>9}  xserve/mlserver: throughput {r['throughput']:.3f} "
            f"(paired per round {r['throughput_paired_median']:.3f}), "
            f"p50 {r['p50']:.3f}, p99 {r['p99']:.3f}"
        )
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--mlserver",
        default=os.environ.get("MLSERVER_BIN", "/tmp/mlserver-venv/bin/mlserver"),
        help="the mlserver command, from its own venv (env MLSERVER_BIN)",
    )
    p.add_argument("--workers", type=int, default=1, help="xserve workers; MLServer's pool (1)")
    p.add_argument("--mlserver-threads", type=int, default=1, help="MLServer's native threads (1)")
    p.add_argument("--rounds", type=int, default=5, help="measured rounds (5)")
    p.add_argument("--concurrency", default="1,8", help="comma-separated levels (1,8)")
    p.add_argument("--forms", default="typed,raw", help="tensor forms measured (typed,raw)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per run at most (3)")
    p.add_argument("--max-requests", type=int, default=20_000, help="requests per run at most")
    p.add_argument("--warmup", type=float, default=1.5, help="warm-up seconds per target & level")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "grpc.json")
    return p.parse_args(argv)


def versions(mlserver: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("xserve", "grpcio", "protobuf", "xgboost", "numpy"):
        with contextlib.suppress(Exception):
            out[name] = package_version(name)
    with contextlib.suppress(Exception):
        probe = "import mlserver, xgboost; print(mlserver.__version__, xgboost.__version__)"
        python = str(Path(mlserver).with_name("python"))
        found = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60)
        out["mlserver"], out["mlserver_xgboost"] = found.stdout.split()
    return out


async def bench(args: argparse.Namespace, targets: list[Target]) -> list[Run]:
    concurrency = [int(c) for c in args.concurrency.split(",")]
    forms = args.forms.split(",")
    print(f"verifying {len(targets[0].requests[FORMS[0]])} rows on both servers...", flush=True)
    await verify(targets)
    for form in forms:
        for c in concurrency:
            for t in targets:
                await load(t, form, c, args.max_requests, args.warmup, round_=-1)
    runs: list[Run] = []
    for r in range(args.rounds):
        order = targets if r % 2 == 0 else targets[::-1]
        for form in forms:
            for c in concurrency:
                for t in order:
                    run = await load(t, form, c, args.max_requests, args.duration, round_=r)
                    runs.append(run)
                    print(
                        f"round {r} {form:<5} c={c:<2} {t.name:<9} {run.throughput:8.0f} req/s "
                        f"p50 {run.p50_ms:6.3f} ms  p99 {run.p99_ms:6.3f} ms",
                        flush=True,
                    )
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(args.mlserver).exists():
        print(f"no MLServer at {args.mlserver}: see this script's docstring", file=sys.stderr)
        return 2
    levels = [(f, int(c)) for f in args.forms.split(",") for c in args.concurrency.split(",")]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    rows = pd.read_csv(MODEL_VERSION_DIR / "background.csv").to_numpy(dtype=np.float64)
    threads = thread_env(args.workers)
    base_env = {k: v for k, v in os.environ.items() if k != "XSERVE_API_KEYS"}
    xserve = Target("xserve", free_port(), output="probabilities", column=1)
    mlserver = Target("mlserver", free_port(), output="predict", column=0)
    targets = [xserve, mlserver]
    for t in targets:
        t.requests = {form: [_request(t, row, form) for row in rows] for form in FORMS}

    load_before = os.getloadavg()
    if load_before[0] > 1.0:
        print(
            f"warning: load average {load_before[0]:.2f} before start: "
            "other work on the machine makes the figures noisy",
            file=sys.stderr,
        )
    started_at = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="xserve-grpc-bench-") as tmp:
        root = Path(tmp)
        xenv = {**base_env, **threads, "XSERVE_MODELS_DIR": str(_xserve_models(root))}
        xenv.setdefault("XSERVE_AUDIT_URL", "none")
        xcommand = [
            sys.executable,
            "-m",
            "xserve.cli",
            "serve",
            *("--host", "127.0.0.1", "--port", str(free_port())),
            *("--grpc-port", str(xserve.port), "--workers", str(args.workers)),
            *("--log-level", "warning"),
        ]
        mfolder = _mlserver_models(root, free_port(), mlserver.port, args.workers)
        # MLServer at its best: single rows on one native thread (xserve predicts small
        # batches on one thread too), and idle OpenMP threads that sleep rather than spin
        # (as xserve serve sets for itself): spinning threads stall it on a busy machine.
        menv = {**base_env, **{k: str(args.mlserver_threads) for k in threads}}
        menv.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        xlog, mlog = RESULTS_DIR / "grpc-xserve.log", RESULTS_DIR / "grpc-mlserver.log"
        with (
            started(xcommand, xenv, xlog, REPO),
            started([args.mlserver, "start", str(mfolder)], menv, mlog, root),
        ):

            async def go() -> list[Run]:
                await asyncio.gather(wait_ready(xserve, xlog), wait_ready(mlserver, mlog))
                return await bench(args, targets)

            try:
                runs = asyncio.run(go())
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
        "benchmark": "grpc_vs_mlserver",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "model": MODEL,
            "workers": args.workers,
            "thread_env": threads,
            "mlserver_thread_env": {k: v for k, v in menv.items() if k in threads},
            "xserve_env": {k: v for k, v in xenv.items() if k.startswith("XSERVE_")},
            "rounds": args.rounds,
            "levels": levels,
            "duration_s": args.duration,
            "max_requests": args.max_requests,
            "warmup_s": args.warmup,
            "rows": len(rows),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "versions": versions(args.mlserver),
        },
        "summary": summary,
        "runs": [{k: v for k, v in asdict(r).items() if k != "latencies"} for r in runs],
        "wall_s": time.monotonic() - started_at,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
