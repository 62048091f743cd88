"""Micro-batching: concurrent requests share model calls, and each gets its own answer."""

from __future__ import annotations

import asyncio
import gc
import shutil
import threading
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.server import copy_demo_models
from xserve.explainers.attach import attach_inline
from xserve.repository.repository import ModelRepository
from xserve.repository.version import ModelVersion
from xserve.serving.batching import MicroBatcher
from xserve.serving.dataplane import DataPlane, Outcome
from xserve.serving.prediction import score
from xserve.serving.request import DecisionRequest
from xserve.settings import Settings

N_FEATURES = 3


class Model:
    """A stand-in model that records every call; NaN input is a bad request."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[np.ndarray] = []
        self.gate = gate
        self.started = threading.Event()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(x.copy())
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if np.isnan(x).any():
            raise ValueError("NaN in input")
        # row-wise: each output row depends only on its input row
        return np.column_stack([x.sum(axis=1), x[:, 0] * 10.0 - x[:, -1]])


def cut(result: np.ndarray, part: slice) -> np.ndarray:
    return result[part]


def rows(n: int, start: float) -> np.ndarray:
    return start + np.arange(n * N_FEATURES, dtype=np.float64).reshape(n, N_FEATURES)


def run(coro: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coro(), timeout=20))


def test_concurrent_requests_share_calls_and_get_their_own_rows() -> None:
    model = Model()
    batcher = MicroBatcher(model, cut, max_rows=32)
    requests = [rows(1, 100.0 * i) for i in range(20)]

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.submit(x) for x in requests))

    answers = run(main)
    assert batcher.calls == len(model.batches) < len(requests)
    for x, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer, Model()(x))


def test_requests_arriving_during_a_call_go_together_in_the_next() -> None:
    gate = threading.Event()
    model = Model(gate)
    batcher = MicroBatcher(model, cut, max_rows=32)

    async def main() -> list[np.ndarray]:
        first = asyncio.create_task(batcher.submit(rows(1, 0.0)))
        while not model.started.is_set():  # the first request runs alone, at once
            await asyncio.sleep(0.001)
        later = [asyncio.create_task(batcher.submit(rows(2, 50.0 * i))) for i in range(1, 6)]
        await asyncio.sleep(0.01)
        gate.set()
        return await asyncio.gather(first, *later)

    answers = run(main)
    assert [len(b) for b in model.batches] == [1, 10]
    assert batcher.calls == 2
    for i, answer in enumerate(answers[1:], start=1):
        np.testing.assert_array_equal(answer, Model()(rows(2, 50.0 * i)))


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=1, max_size=25), max_rows=st.integers(1, 16))
def test_each_caller_gets_exactly_its_rows_and_batches_respect_max_rows(
    sizes: list[int], max_rows: int
) -> None:
    model = Model()
    batcher = MicroBatcher(model, cut, max_rows=max_rows)
    requests = [rows(n, 1000.0 * i) for i, n in enumerate(sizes)]

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.submit(x) for x in requests))

    answers = run(main)
    for x, answer in zip(requests, answers, strict=True):
        assert answer.shape == (len(x), 2)
        np.testing.assert_array_equal(answer, Model()(x))
    # every row ran exactly once, in some call
    ran = np.concatenate(model.batches)
    np.testing.assert_array_equal(ran, np.concatenate(requests))
    for batch in model.batches:
        # a batch larger than max_rows is one request alone
        alone = any(len(x) == len(batch) and np.array_equal(x, batch) for x in requests)
        assert len(batch) <= max_rows or alone
    assert batcher.calls == len(model.batches) <= len(requests)


def test_a_request_larger_than_max_rows_runs_alone() -> None:
    model = Model()
    batcher = MicroBatcher(model, cut, max_rows=8)
    small_a, big, small_b = rows(2, 0.0), rows(50, 1000.0), rows(3, 5000.0)

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.submit(x) for x in (small_a, big, small_b)))

    answers = run(main)
    big_calls = [b for b in model.batches if len(b) >= 50]
    assert len(big_calls) == 1
    np.testing.assert_array_equal(big_calls[0], big)
    assert all(len(b) <= 8 for b in model.batches if b is not big_calls[0])
    np.testing.assert_array_equal(answers[1], Model()(big))
    np.testing.assert_array_equal(answers[0], Model()(small_a))
    np.testing.assert_array_equal(answers[2], Model()(small_b))


def test_a_bad_request_fails_alone() -> None:
    model = Model()
    batcher = MicroBatcher(model, cut, max_rows=32)
    requests = [rows(2, 10.0 * i) for i in range(6)]
    requests[3] = requests[3].copy()
    requests[3][1, 1] = np.nan

    async def main() -> list[Any]:
        return await asyncio.gather(*(batcher.submit(x) for x in requests), return_exceptions=True)

    answers = run(main)
    assert isinstance(answers[3], ValueError) and "NaN" in str(answers[3])
    for i, (x, answer) in enumerate(zip(requests, answers, strict=True)):
        if i != 3:
            assert isinstance(answer, np.ndarray), answer
            np.testing.assert_array_equal(answer, Model()(x))
    assert len(model.batches[0]) == 12  # they did share a call first

    async def after() -> np.ndarray:  # and the batcher still serves
        return await batcher.submit(rows(1, 7.0))

    np.testing.assert_array_equal(run(after), Model()(rows(1, 7.0)))


def test_a_failing_lone_request_does_not_stick() -> None:
    batcher = MicroBatcher(Model(), cut, max_rows=4)
    bad = rows(1, 0.0)
    bad[0, 0] = np.nan

    async def main() -> np.ndarray:
        with pytest.raises(ValueError, match="NaN"):
            await batcher.submit(bad)
        return await batcher.submit(rows(1, 1.0))

    np.testing.assert_array_equal(run(main), Model()(rows(1, 1.0)))


@pytest.mark.parametrize("cancel", ["running", "queued"])
def test_a_cancelled_caller_does_not_break_the_others(cancel: str) -> None:
    gate = threading.Event()
    model = Model(gate)
    batcher = MicroBatcher(model, cut, max_rows=32)

    async def main() -> tuple[list[Any], np.ndarray]:
        first = asyncio.create_task(batcher.submit(rows(1, 0.0)))
        while not model.started.is_set():
            await asyncio.sleep(0.001)
        queued = [asyncio.create_task(batcher.submit(rows(1, 10.0 * i))) for i in range(1, 5)]
        await asyncio.sleep(0.01)
        victim = first if cancel == "running" else queued[1]
        victim.cancel()
        await asyncio.sleep(0.01)
        gate.set()
        answers = await asyncio.gather(first, *queued, return_exceptions=True)
        again = await batcher.submit(rows(2, 99.0))
        return answers, again

    answers, again = run(main)
    victim_index = 0 if cancel == "running" else 2
    for i, answer in enumerate(answers):
        if i == victim_index:
            assert isinstance(answer, asyncio.CancelledError)
        else:
            np.testing.assert_array_equal(answer, Model()(rows(1, 10.0 * i)))
    np.testing.assert_array_equal(again, Model()(rows(2, 99.0)))


def test_an_idle_model_answers_at_once_even_with_max_wait() -> None:
    model = Model()
    batcher = MicroBatcher(model, cut, max_rows=32, max_wait=10.0)

    async def main() -> np.ndarray:
        return await asyncio.wait_for(batcher.submit(rows(1, 3.0)), timeout=2.0)

    np.testing.assert_array_equal(run(main), Model()(rows(1, 3.0)))
    assert batcher.calls == 1


def test_max_wait_gathers_requests_that_queue_behind_a_call() -> None:
    gate = threading.Event()
    model = Model(gate)
    batcher = MicroBatcher(model, cut, max_rows=32, max_wait=0.5)

    async def main() -> list[np.ndarray]:
        first = asyncio.create_task(batcher.submit(rows(1, 0.0)))
        while not model.started.is_set():
            await asyncio.sleep(0.001)
        second = asyncio.create_task(batcher.submit(rows(1, 5.0)))
        await asyncio.sleep(0.01)
        gate.set()  # the first call ends; the second waits up to max_wait for company
        await asyncio.sleep(0.05)
        third = asyncio.create_task(batcher.submit(rows(2, 9.0)))
        return await asyncio.gather(first, second, third)

    answers = run(main)
    assert [len(b) for b in model.batches] == [1, 3]
    np.testing.assert_array_equal(answers[1], Model()(rows(1, 5.0)))
    np.testing.assert_array_equal(answers[2], Model()(rows(2, 9.0)))


# --- end to end: the data plane on the demo credit-risk model


class Counting:
    """The version's own inline explainer, counting the model calls it serves."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.method = real.method
        self.output = real.output
        self.calls = 0

    def explain(self, x: np.ndarray) -> Any:
        self.calls += 1
        return self.real.explain(x)

    def model_output(self, x: np.ndarray) -> np.ndarray:
        return self.real.model_output(x)  # type: ignore[no-any-return]


def _plane(root: Path, on_load: list[Any], **settings: Any) -> DataPlane:
    repository = ModelRepository(root, on_load=on_load)
    repository.scan()
    return DataPlane(repository, Settings(**settings))


def _explain_request(row: np.ndarray) -> DecisionRequest:
    return DecisionRequest("predict", "credit-risk", "1", instances=row.tolist(), explain=True)


def test_dataplane_batches_explanations_identically_to_unbatched_calls(tmp_path: Path) -> None:
    root = copy_demo_models(tmp_path / "models")
    counters: list[Counting] = []

    def counted(model: ModelVersion) -> ModelVersion:
        model = attach_inline(model)
        counters.append(Counting(model.inline))
        return replace(model, inline=counters[-1])

    plane = _plane(root, [counted], batch_max_size=32)
    model = plane.model("credit-risk", "1")
    assert model.background is not None
    x = model.background[:64]

    async def main() -> list[Outcome]:
        return await asyncio.gather(
            *(plane.decide(_explain_request(x[i : i + 1])) for i in range(64))
        )

    batched = run(main)
    (counter,) = [c for c in counters if c is model.inline]
    assert 2 <= counter.calls < 64  # 64 rows, at most 32 in a call
    for i, got in enumerate(batched):
        alone = score(model, x[i : i + 1], explain=True)
        p = got.prediction
        assert p is not None and p.attribution is not None and alone.attribution is not None
        np.testing.assert_array_equal(p.outputs, alone.outputs)
        np.testing.assert_array_equal(p.attribution.values, alone.attribution.values)
        np.testing.assert_array_equal(p.attribution.base, alone.attribution.base)
        assert p.attribution.values.shape == (1, len(model.features), 2)
        assert got.answered().explanations == alone.explanations()


def test_dataplane_forgets_a_version_once_unloaded(tmp_path: Path) -> None:
    """A version removed from the repository is freed: the data plane's batchers must not
    keep it alive."""
    root = copy_demo_models(tmp_path / "models")
    plane = _plane(root, [attach_inline])
    model = plane.model("credit-risk", "1")
    assert model.background is not None
    x = model.background[:2]

    async def use() -> None:
        await plane.decide(_explain_request(x))
        await plane.decide(DecisionRequest("predict", "credit-risk", "1", instances=x.tolist()))

    asyncio.run(use())
    gone = weakref.ref(model)
    del model
    shutil.rmtree(root / "credit-risk" / "1")
    plane.repository.scan()
    gc.collect()
    assert gone() is None, "the data plane keeps an unloaded version alive"
