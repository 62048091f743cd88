"""Inline explanations: xserve's ``predict?explain=true`` against shap.

Three comparisons on the demo model ``credit-risk`` (XGBoost, 300 trees of depth 6):

1. single-row ``POST /v1/models/credit-risk/predict?explain=true`` at each concurrency
   level, xserve against a hand-written FastAPI + shap service
   (``baseline_fastapi_shap.py``), both served side by side with the same worker
   count and native-thread variables, measured in interleaved rounds;
2. the raw in-process call, ``explainer.shap_values(x_one_row)`` plus the booster's
   probability for that row, timed in a tight loop in this process (with the
   servers' thread variables), against xserve's p50 at concurrency 1; xserve's own
   in-process ``score(model, x, explain=True)`` is timed alongside for reference;
3. 1,000-row batches: rows/s of xserve over HTTP (one request, rows in feature
   order) and of its in-process ``score``, against the raw ``shap_values(x1000)``
   (plus probabilities).

Before any measurement every answer is checked: xserve's attributions (HTTP and
in-process, single rows and the batch) and the baseline's must equal shap's for
the same rows to 1e-5, or the script aborts with exit status 1.

    .venv/bin/python bench/explain_vs_shap.py [--workers N] [--rounds R] ...

Results: a table on stdout and ``bench/results/explain.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import predict_vs_fastapi as pvf
from predict_vs_fastapi import BenchError, Connection, Target

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from xserve.repository.version import ModelVersion

    Array = npt.NDArray[np.float64]

EXPLAIN_PATH = f"{pvf.PATH}?explain=true"
BASELINE_APP = "baseline_fastapi_shap:app"
TOLERANCE = 1e-5
"""Attributions and base values: |xserve - shap| <= 1e-5 * max(1, |shap|)."""
STABLE = 1e-9
"""Answers under load must stay what was verified (relative, for float noise)."""
SINGLE = ("raw", "score", "score+render")
"""In-process single-row targets: shap's call (+ probability); xserve's score(); score()
plus the rendering of the answer (``Prediction.body``)."""
BATCH = ("raw", "score", "xserve-http")


# -- the in-process side ------------------------------------------------------------------


@dataclass
class Local:
    """shap's explainer and xserve's model version, loaded in this process."""

    booster: Any
    explainer: Any
    model: ModelVersion
    features: list[str]
    x: Array
    """The background sample, (200, 8), in feature order."""
    x_batch: Array
    """The batch: the background sample repeated to ``--batch-rows`` rows."""

    @classmethod
    def load(cls, threads: int, batch_rows: int) -> Local:
        """Imports numpy, xgboost and shap: call after the thread variables are set."""
        import numpy as np
        import xgboost as xgb
        from baseline_fastapi_shap import tree_explainer

        from xserve.explainers.attach import attach_inline
        from xserve.repository.version import load_version

        model = attach_inline(load_version(pvf.MODEL, "1", pvf.MODEL_VERSION_DIR, threads=threads))
        booster = xgb.Booster()
        booster.load_model(str(pvf.MODEL_VERSION_DIR / "model.json"))
        x = model.background
        if x is None:
            raise BenchError(f"{pvf.MODEL_VERSION_DIR}: no background sample")
        reps = -(-batch_rows // len(x))
        return cls(
            booster=booster,
            explainer=tree_explainer(booster),
            model=model,
            features=model.feature_names,
            x=np.ascontiguousarray(x),
            x_batch=np.ascontiguousarray(np.tile(x, (reps, 1))[:batch_rows]),
        )

    def raw(self, x: Array) -> tuple[Any, Any]:
        """What a request costs shap: its attributions and the booster's probabilities."""
        return self.explainer.shap_values(x), self.booster.inplace_predict(
            x, validate_features=False
        )

    def score(self, x: Array) -> Any:
        from xserve.serving.prediction import score

        return score(self.model, x, explain=True)

    def score_render(self, x: Array) -> Any:
        return self.score(x).body()

    def reference(self, x: Array) -> tuple[Array, float, Array]:
        """shap's values (rows, features) for class 1's log-odds, its base value, and the
        probabilities of class 1."""
        import numpy as np

        values = np.asarray(self.explainer.shap_values(x), dtype=np.float64)
        base = float(np.asarray(self.explainer.expected_value).reshape(-1)[0])
        p = np.asarray(self.booster.inplace_predict(x, validate_features=False), np.float64)
        return values, base, p

    def describe(self) -> dict[str, Any]:
        config = json.loads(self.booster.save_config())
        updater = config["learner"]["gradient_booster"].get("tree_train_param", {})
        return {
            "trees": int(self.booster.num_boosted_rounds()),
            "max_depth": updater.get("max_depth"),
            "features": self.features,
        }


# -- checking the answers -------------------------------------------------------------------


def gap(a: Any, b: Any) -> float:
    """Largest |a - b| / max(1, |b|) over two arrays (or an array and a number)."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if b.ndim == 0:
        b = np.broadcast_to(b, a.shape)
    if a.shape != b.shape:
        return math.inf
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b)), initial=0.0))


def top_reasons(values: Sequence[float], names: Sequence[str], limit: int = 4) -> list[str]:
    order = sorted(range(len(values)), key=lambda i: -values[i])
    return [names[i] for i in order if values[i] > 0][:limit]


def check_explanations(
    who: str,
    answers: Sequence[dict[str, Any]],
    reference: tuple[Array, float, Array],
    names: Sequence[str],
) -> float:
    """Every row's explanation equals shap's (to TOLERANCE); returns the largest gap.

    xserve explains the predicted class: for class 0 it reports the log-odds of class 0,
    so its values and base value are shap's (class 1) with the sign flipped."""
    values, base, _ = reference
    if len(answers) != len(values):
        raise BenchError(f"{who}: {len(answers)} explanations for {len(values)} rows")
    worst = 0.0
    for i, e in enumerate(answers):
        if e.get("method") != "tree_shap" or e.get("output") != "margin":
            raise BenchError(f"{who} row {i}: not a tree_shap margin explanation: {e}")
        sign = 1.0 if e["class"] == 1 else -1.0
        got = [sign * e["values"][n] for n in names]
        row_gap = max(gap(got, values[i]), gap(sign * e["base_value"], base))
        reasons = [r["feature"] for r in e["reason_codes"]]
        want = top_reasons(values[i].tolist(), names)
        if row_gap > TOLERANCE or reasons != want:
            raise BenchError(
                f"{who} row {i}: explanation differs from shap's (gap {row_gap:.2e}; "
                f"reasons {reasons}, shap's {want}): {e}"
            )
        for r in e["reason_codes"]:
            j = names.index(r["feature"])
            worst = max(worst, gap(r["contribution"], values[i][j]))
        worst = max(worst, row_gap)
    return worst


def check_outputs(who: str, answers: Sequence[dict[str, Any]], p: Array) -> None:
    for i, a in enumerate(answers):
        want = [[1.0 - float(p[i]), float(p[i])]]
        if a["predictions"] != [int(p[i] > 0.5)] or gap(a["probabilities"], want) > STABLE:
            raise BenchError(f"{who} row {i}: prediction differs from the booster's: {a}")


def nearly(a: Any, b: Any) -> bool:
    """Equal JSON values, floats to STABLE (relative)."""
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, (int, float))
            and isinstance(b, (int, float))
            and math.isclose(a, b, rel_tol=STABLE, abs_tol=1e-12)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(nearly(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(nearly(u, v) for u, v in zip(a, b, strict=True))
    return bool(a == b)


def explain_check(expected: dict[str, list[Any]]) -> pvf.Check:
    """The load runs' check: the verified predictions, probabilities and explanations."""

    def check(target: Target, row: int, status: int, body: bytes) -> None:
        pvf.check_answer(target, row, status, body)
        got = json.loads(body).get("explanations")
        want = expected[target.name][row]
        if got != want and not nearly(got, want):
            raise BenchError(f"{target.name} row {row}: explanation changed: {got}")

    return check


async def verify(
    xserve: Target, baseline: Target, local: Local, batch_request: bytes
) -> dict[str, Any]:
    """Every answer against shap's; returns the largest gaps and the verified answers."""
    names = local.features
    ref = local.reference(local.x)
    ref_batch = local.reference(local.x_batch)
    gaps: dict[str, float] = {}
    # in-process score(), single rows and the batch
    for what, x, r in (("rows", local.x, ref), ("batch", local.x_batch, ref_batch)):
        a = local.score(x).attribution
        gaps[f"score_{what}"] = max(gap(a.values[:, :, 1], r[0]), gap(a.base[:, 1], r[1]))
        if gaps[f"score_{what}"] > TOLERANCE:
            raise BenchError(f"in-process score() ({what}): gap {gaps[f'score_{what}']:.2e}")
        single = local.score(x[:1]).attribution
        if gap(single.values[0, :, 1], r[0][0]) > TOLERANCE:
            raise BenchError("in-process score() of one row differs from shap's")
    # HTTP, single rows
    got = {t.name: await pvf.answers(t) for t in (xserve, baseline)}
    for name, answers in got.items():
        check_outputs(name, answers, ref[2])
        explanations = [a["explanations"][0] for a in answers]
        if name == "baseline" and any(e["class"] != 1 for e in explanations):
            raise BenchError("baseline: explains another class than 1")
        gaps[f"{name}_http_rows"] = check_explanations(name, explanations, ref, names)
    # HTTP, the batch
    conn = await Connection.open(xserve.port)
    try:
        status, body = await conn.request(batch_request)
    finally:
        await conn.close()
    if status != 200:
        raise BenchError(f"xserve batch: HTTP {status}: {body[:300]!r}")
    batch_answer = json.loads(body)
    rows = [
        {"predictions": [p], "probabilities": [q]}
        for p, q in zip(batch_answer["predictions"], batch_answer["probabilities"], strict=True)
    ]
    check_outputs("xserve batch", rows, ref_batch[2])
    gaps["xserve_http_batch"] = check_explanations(
        "xserve batch", batch_answer["explanations"], ref_batch, names
    )
    for t in (xserve, baseline):
        t.expected = [(a["predictions"], a["probabilities"]) for a in got[t.name]]
    return {
        "gaps": gaps,
        "expected": {name: [a["explanations"] for a in answers] for name, answers in got.items()},
        "batch": batch_answer,
    }


# -- timing ---------------------------------------------------------------------------------


@dataclass
class Timed:
    """One run of one target: per-call latencies, ``rows`` rows a call."""

    part: str
    target: str
    round: int
    rows: int
    latencies: list[float] = field(repr=False)

    @property
    def calls(self) -> int:
        return len(self.latencies)

    @property
    def rows_per_s(self) -> float:
        return self.rows * self.calls / sum(self.latencies)

    def to_dict(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {
            "part": self.part,
            "target": self.target,
            "round": self.round,
            "rows": self.rows,
            "calls": self.calls,
            "seconds": sum(self.latencies),
            "rows_per_s": self.rows_per_s,
            "p50_ms": pvf.percentile(ordered, 50) * 1e3,
        }


def time_calls(
    call: Callable[[int], object], n: int, duration: float, max_calls: int
) -> list[float]:
    """``call(i)`` in a tight loop (i cycling over n inputs), at least once."""
    clock = time.perf_counter
    latencies: list[float] = []
    deadline = clock() + duration
    while not latencies or (clock() < deadline and len(latencies) < max_calls):
        i = len(latencies) % n
        t0 = clock()
        call(i)
        latencies.append(clock() - t0)
    return latencies


def single_calls(local: Local) -> dict[str, Callable[[int], object]]:
    rows = [local.x[i : i + 1] for i in range(len(local.x))]
    fns: dict[str, Callable[[Array], object]] = {
        "raw": local.raw,
        "score": local.score,
        "score+render": local.score_render,
    }

    def on_rows(f: Callable[[Array], object]) -> Callable[[int], object]:
        return lambda i: f(rows[i])

    return {name: on_rows(fns[name]) for name in SINGLE}


async def http_batch(
    port: int, payload: bytes, expected: dict[str, Any], duration: float
) -> list[float]:
    """One keep-alive connection, the batch request in a closed loop, at least once.
    Each answer is parsed and checked after its latency is taken."""
    conn = await Connection.open(port)
    clock = time.perf_counter
    latencies: list[float] = []
    deadline = clock() + duration
    try:
        while not latencies or clock() < deadline:
            t0 = clock()
            status, body = await conn.request(payload)
            latencies.append(clock() - t0)
            if status != 200:
                raise BenchError(f"xserve batch: HTTP {status}: {body[:300]!r}")
            answer = json.loads(body)
            for key in ("predictions", "probabilities", "explanations"):
                if answer[key] != expected[key] and not nearly(answer[key], expected[key]):
                    raise BenchError(f"xserve batch: '{key}' changed")
    finally:
        await conn.close()
    return latencies


# -- the run --------------------------------------------------------------------------------


async def bench(
    args: argparse.Namespace,
    xserve: Target,
    baseline: Target,
    local: Local,
    batch_request: bytes,
    load_trace: list[tuple[str, float]],
) -> tuple[dict[str, Any], list[pvf.Run], list[Timed]]:
    levels = [int(c) for c in args.concurrency.split(",")]
    print(
        f"verifying {len(xserve.requests)} rows against both servers and shap, "
        f"and a {len(local.x_batch)}-row batch...",
        flush=True,
    )
    verified = await verify(xserve, baseline, local, batch_request)
    print(
        "  largest gaps to shap: " + ", ".join(f"{k} {v:.1e}" for k, v in verified["gaps"].items()),
        flush=True,
    )
    check = explain_check(verified["expected"])
    singles = single_calls(local)
    n = len(local.x)

    def batch_call(name: str) -> Callable[[], Awaitable[list[float]]]:
        if name == "xserve-http":
            return lambda: http_batch(
                xserve.port, batch_request, verified["batch"], args.batch_duration
            )
        fn = local.raw if name == "raw" else local.score

        async def run() -> list[float]:
            return time_calls(lambda _: fn(local.x_batch), 1, args.batch_duration, 10**6)

        return run

    # warm-up: unmeasured
    for c in levels:
        for t in (xserve, baseline):
            await pvf.load(t, c, args.max_requests, args.warmup, round_=-1, check=check)
    for name in SINGLE:
        time_calls(singles[name], n, min(args.warmup, 0.5), args.max_requests)

    http_runs: list[pvf.Run] = []
    local_runs: list[Timed] = []
    for r in range(args.rounds):
        load_trace.append((f"round {r}", os.getloadavg()[0]))
        order = (xserve, baseline) if r % 2 == 0 else (baseline, xserve)
        for c in levels:
            for t in order:
                run = await pvf.load(t, c, args.max_requests, args.duration, r, check=check)
                http_runs.append(run)
                print(
                    f"round {r} c={c:<2} {t.name:<12} {run.throughput:8.0f} req/s "
                    f"p50 {run.p50_ms:7.3f} ms  p99 {run.p99_ms:7.3f} ms",
                    flush=True,
                )
        for name in SINGLE if r % 2 == 0 else SINGLE[::-1]:
            lat = time_calls(singles[name], n, args.local_duration, args.max_requests)
            local_runs.append(Timed("single", name, r, 1, lat))
            print(
                f"round {r} in-process {name:<12} {len(lat) / sum(lat):8.0f} calls/s "
                f"p50 {pvf.percentile(sorted(lat), 50) * 1e3:7.3f} ms",
                flush=True,
            )

    for name in BATCH:  # warm-up: one call each
        await batch_call(name)()
    for r in range(args.batch_rounds):
        load_trace.append((f"batch round {r}", os.getloadavg()[0]))
        for name in BATCH[r % 3 :] + BATCH[: r % 3]:
            lat = await batch_call(name)()
            timed = Timed("batch", name, r, len(local.x_batch), lat)
            local_runs.append(timed)
            print(
                f"batch round {r} {name:<12} {timed.rows_per_s:8.0f} rows/s "
                f"({timed.calls} calls, {sum(lat) / timed.calls * 1e3:.0f} ms each)",
                flush=True,
            )
    return verified["gaps"], http_runs, local_runs


# -- summary ----------------------------------------------------------------------------------


def summarize(
    args: argparse.Namespace, http_runs: list[pvf.Run], local_runs: list[Timed]
) -> dict[str, Any]:
    levels = [int(c) for c in args.concurrency.split(",")]
    http = pvf.summarize(http_runs, levels)
    single: dict[str, Any] = {}
    for name in SINGLE:
        mine = [t for t in local_runs if t.part == "single" and t.target == name]
        pooled = sorted(x for t in mine for x in t.latencies)
        single[name] = {
            "calls_per_s": pvf.median([t.rows_per_s for t in mine]),
            "p50_ms": pvf.percentile(pooled, 50) * 1e3,
            "p99_ms": pvf.percentile(pooled, 99) * 1e3,
            "calls": len(pooled),
        }
    batch: dict[str, Any] = {}
    for name in BATCH:
        mine = [t for t in local_runs if t.part == "batch" and t.target == name]
        batch[name] = {
            "rows_per_s": pvf.median([t.rows_per_s for t in mine]),
            "rows_per_s_min": min(t.rows_per_s for t in mine),
            "rows_per_s_max": max(t.rows_per_s for t in mine),
            "call_p50_ms": pvf.percentile(sorted(x for t in mine for x in t.latencies), 50) * 1e3,
            "calls": sum(t.calls for t in mine),
        }

    def rate(target: str, r: int) -> float:
        return next(
            t.rows_per_s
            for t in local_runs
            if t.part == "batch" and t.target == target and t.round == r
        )

    for name in ("score", "xserve-http"):
        batch[name]["ratio_to_raw"] = batch[name]["rows_per_s"] / batch["raw"]["rows_per_s"]
        batch[name]["ratio_to_raw_paired_median"] = pvf.median(
            [rate(name, r) / rate("raw", r) for r in range(args.batch_rounds)]
        )
    c1 = http.get("1")
    targets: dict[str, Any] = {}
    for c, level in http.items():
        ratio = level["ratio_xserve_over_baseline"]
        targets[f"throughput_c{c}_vs_baseline"] = {
            "target": ">= 1.5",
            "value": ratio["throughput"],
            "paired": ratio["throughput_paired_median"],
            "met": ratio["throughput"] >= 1.5,
        }
    if c1 is not None:
        gap_ms = c1["xserve"]["p50_ms"] - single["raw"]["p50_ms"]
        targets["p50_c1_minus_raw_call_ms"] = {
            "target": "<= 1.0",
            "value": gap_ms,
            "met": gap_ms <= 1.0,
        }
    for name in ("xserve-http", "score"):
        ratio = batch[name]["ratio_to_raw"]
        targets[f"batch_rows_per_s_{name}_vs_raw"] = {
            "target": ">= 0.9",
            "value": ratio,
            "paired": batch[name]["ratio_to_raw_paired_median"],
            "met": ratio >= 0.9,
        }
    return {
        "http_single_row": http,
        "in_process_single_row": single,
        "batch": batch,
        "targets": targets,
    }


def report(summary: dict[str, Any], batch_rows: int) -> str:
    http, single, batch = (
        summary["http_single_row"],
        summary["in_process_single_row"],
        summary["batch"],
    )
    lines = ["1. single-row predict?explain=true over HTTP", pvf.table(http), ""]
    lines.append("2. single row in-process (tight loop, this process)")
    lines.append(f"      {'call':<40} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    labels = {
        "raw": "shap_values(x) + inplace_predict(x)",
        "score": "xserve score(model, x, explain=True)",
        "score+render": "score(...).body()",
    }
    for name in SINGLE:
        s = single[name]
        lines.append(
            f"      {labels[name]:<40} {s['calls_per_s']:>8.0f} {s['p50_ms']:>8.3f} "
            f"{s['p99_ms']:>8.3f}"
        )
    if "1" in http:
        for t in pvf.TARGETS:
            p50 = http["1"][t]["p50_ms"]
            lines.append(
                f"      {t} HTTP p50 at c=1 {p50:.3f} ms: raw call + "
                f"{p50 - single['raw']['p50_ms']:.3f} ms"
            )
    lines.append("")
    lines.append(f"3. {batch_rows}-row batches")
    lines.append(f"      {'target':<40} {'rows/s':>8} {'(min-max)':>13} {'ms/call':>8}")
    labels = {
        "raw": f"shap_values(x{batch_rows}) + inplace_predict",
        "score": "xserve score(model, x, explain=True)",
        "xserve-http": "xserve POST predict?explain=true",
    }
    for name in BATCH:
        b = batch[name]
        spread = f"{b['rows_per_s_min']:.0f}-{b['rows_per_s_max']:.0f}"
        ratio = (
            f"  {b['ratio_to_raw']:.3f}x raw (paired {b['ratio_to_raw_paired_median']:.3f})"
            if "ratio_to_raw" in b
            else ""
        )
        lines.append(
            f"      {labels[name]:<40} {b['rows_per_s']:>8.0f} {spread:>13} "
            f"{b['call_p50_ms']:>8.0f}{ratio}"
        )
    lines.append("")
    lines.append("targets")
    for key, t in summary["targets"].items():
        paired = f" (paired {t['paired']:.3f})" if "paired" in t else ""
        lines.append(
            f"      {key:<40} {t['value']:>8.3f}{paired}  target {t['target']}: "
            f"{'met' if t['met'] else 'MISSED'}"
        )
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--workers", type=int, default=1, help="server processes, for both (1)")
    p.add_argument("--rounds", type=int, default=5, help="measured single-row rounds (5)")
    p.add_argument("--concurrency", default="1,8", help="comma-separated levels (1,8)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per HTTP run at most")
    p.add_argument("--max-requests", type=int, default=20_000, help="requests per run at most")
    p.add_argument("--warmup", type=float, default=1.5, help="warm-up seconds per target & level")
    p.add_argument(
        "--local-duration",
        type=float,
        default=1.0,
        help="seconds per in-process single-row run (1)",
    )
    p.add_argument("--batch-rows", type=int, default=1000, help="rows in a batch (1000)")
    p.add_argument("--batch-rounds", type=int, default=3, help="measured batch rounds (3)")
    p.add_argument(
        "--batch-duration",
        type=float,
        default=2.0,
        help="seconds per batch run, at least one call (2)",
    )
    p.add_argument("--out", type=Path, default=pvf.RESULTS_DIR / "explain.json")
    return p.parse_args(argv)


def versions() -> dict[str, str]:
    out = pvf.versions()
    with contextlib.suppress(Exception):
        out["shap"] = package_version("shap")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    pvf.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_before = os.getloadavg()
    if load_before[0] > 1.0:
        print(
            f"warning: load average {load_before[0]:.2f} before start: "
            "other work on the machine makes the figures noisy",
            file=sys.stderr,
        )
    # The servers' thread variables, set here before numpy and xgboost load, so the
    # in-process calls run with the same native threads as the servers.
    threads = pvf.thread_env(args.workers)
    os.environ.update(threads)
    os.environ["XSERVE_MODELS_DIR"] = str(pvf.MODELS_DIR)
    audit_db = pvf.RESULTS_DIR / "explain-audit.db"
    if "XSERVE_AUDIT_URL" not in os.environ:  # xserve's default sink, in a file of ours
        for suffix in ("", "-wal", "-shm"):
            Path(f"{audit_db}{suffix}").unlink(missing_ok=True)
        os.environ["XSERVE_AUDIT_URL"] = f"sqlite:///{audit_db}"
    env = {**os.environ, "BASELINE_MODEL": str(pvf.MODEL_VERSION_DIR / "model.json")}

    from xserve.settings import Settings

    settings = Settings()
    local = Local.load(int(threads["OMP_NUM_THREADS"]), args.batch_rows)
    rows = pvf.load_rows(pvf.MODEL_VERSION_DIR / "background.csv")
    xserve, baseline = (Target(name, pvf.free_port()) for name in pvf.TARGETS)
    for t in (xserve, baseline):
        t.requests = [pvf.request_bytes(t.port, row, EXPLAIN_PATH) for row in rows]
    batch = [[row[f] for f in local.features] for row in rows]
    batch = (batch * -(-args.batch_rows // len(batch)))[: args.batch_rows]
    batch_request = pvf.http_request(xserve.port, EXPLAIN_PATH, {"instances": batch})
    if args.batch_rows > settings.max_instances:
        print(f"warning: XSERVE_MAX_INSTANCES={settings.max_instances} < batch", file=sys.stderr)

    load_trace: list[tuple[str, float]] = [("start", load_before[0])]
    with (
        pvf.running("xserve", xserve.port, args.workers, env, log_name="xserve-explain") as xlog,
        pvf.running(
            "baseline", baseline.port, args.workers, env, BASELINE_APP, "baseline-shap"
        ) as blog,
    ):

        async def go() -> tuple[dict[str, Any], list[pvf.Run], list[Timed]]:
            await asyncio.gather(pvf.wait_ready(xserve, xlog), pvf.wait_ready(baseline, blog))
            return await bench(args, xserve, baseline, local, batch_request, load_trace)

        try:
            with asyncio.Runner(loop_factory=pvf.loop_factory()) as runner:
                gaps, http_runs, local_runs = runner.run(go())
        except BenchError as exc:
            print(f"ABORTED: {exc}", file=sys.stderr)
            return 1
    load_after = os.getloadavg()
    load_trace.append(("end", load_after[0]))

    summary = summarize(args, http_runs, local_runs)
    loads = [v for _, v in load_trace]
    print()
    print(
        f"workers={args.workers} threads/worker={threads['OMP_NUM_THREADS']} "
        f"rounds={args.rounds} run<= {args.duration}s/{args.max_requests} req "
        f"(req/s: median of rounds; p50/p99: all rounds pooled); "
        f"load average (1 min) {min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} cores"
    )
    print(report(summary, args.batch_rows))
    result = {
        "benchmark": "explain_vs_shap",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "model": pvf.MODEL,
            "model_shape": local.describe(),
            "workers": args.workers,
            "thread_env": threads,
            "xserve_env": {k: v for k, v in os.environ.items() if k.startswith("XSERVE_")},
            "openmp_env": {
                k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "KMP_"))
            },
            "xserve_settings": settings.model_dump(
                mode="json",
                include={
                    "batch_max_size",
                    "batch_max_wait_ms",
                    "max_instances",
                    "max_body_bytes",
                    "audit_url",
                },
            ),
            "rounds": args.rounds,
            "concurrency": levels,
            "duration_s": args.duration,
            "max_requests": args.max_requests,
            "warmup_s": args.warmup,
            "local_duration_s": args.local_duration,
            "batch_rows": args.batch_rows,
            "batch_rounds": args.batch_rounds,
            "batch_duration_s": args.batch_duration,
            "rows": len(rows),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "versions": versions(),
        },
        "verification": {"tolerance": TOLERANCE, "largest_gap_to_shap": gaps},
        "summary": summary,
        "http_runs": [{k: v for k, v in vars(r).items() if k != "latencies"} for r in http_runs],
        "in_process_runs": [t.to_dict() for t in local_runs],
        "wall_s": time.monotonic() - started,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "load_average_trace": load_trace,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten {args.out} in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
