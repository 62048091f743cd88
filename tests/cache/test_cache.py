"""One suite for every explanation cache: on disk and in the real Redis."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.jobs_support import CACHE_DB, flushed_redis, redis_url
from tests.server import DEMO_MODELS
from xserve.cache import ExplanationCache, explanation_key, open_cache
from xserve.cache.disk import DiskCache
from xserve.repository.version import ModelVersion, load_version
from xserve.settings import Settings

BACKENDS = ["disk", "redis"]


@cache
def iris() -> ModelVersion:
    return load_version("iris", "1", DEMO_MODELS / "iris" / "1")


def make_cache(backend: str, root: Path, **bounds: Any) -> ExplanationCache:
    url = str(root / "cache") if backend == "disk" else redis_url(CACHE_DB)
    return open_cache(Settings(cache_url=url, **bounds))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        flushed_redis(CACHE_DB)
    return str(request.param)


@pytest.fixture
def store(backend: str, tmp_path: Path) -> Iterator[ExplanationCache]:
    c = make_cache(backend, tmp_path)
    yield c
    c.close()


def record(i: int) -> dict[str, Any]:
    return {"outputs": [0.25, 0.75], "values": [[i * 0.5, -i * 0.5]], "note": "é" * (i % 3)}


def test_put_get_and_counts(store: ExplanationCache) -> None:
    assert store.get("a" * 64) is None
    store.put("a" * 64, record(1))
    assert store.get("a" * 64) == record(1)
    store.put("a" * 64, record(2))  # replaced whole
    assert store.get_many(["a" * 64, "b" * 64]) == [record(2), None]
    stats = store.stats()
    assert (stats.hits, stats.misses, stats.entries) == (2, 2, 1)
    store.clear()
    assert store.get("a" * 64) is None and store.stats().entries == 0


def test_key_covers_digest_method_params_background_and_input() -> None:
    model = iris()
    assert model.background is not None
    row = model.background[0].copy()
    base = explanation_key(model, "kernel_shap", '{"seed":0}', row)
    assert base == explanation_key(model, "kernel_shap", '{"seed":0}', row.copy())
    other_version = dataclasses.replace(model, digest="0" * 64)
    other_background = dataclasses.replace(model, background=model.background[:-1])
    changed = row.copy()
    changed[2] += 1e-12
    assert (
        len(
            {
                base,
                explanation_key(other_version, "kernel_shap", '{"seed":0}', row),
                explanation_key(model, "lime", '{"seed":0}', row),
                explanation_key(model, "kernel_shap", '{"seed":1}', row),
                explanation_key(other_background, "kernel_shap", '{"seed":0}', row),
                explanation_key(model, "kernel_shap", '{"seed":0}', changed),
            }
        )
        == 6
    )
    # One value, one key: -0.0 is 0.0 and every NaN the same missing value.
    zero, negative = row.copy(), row.copy()
    zero[0], negative[0] = 0.0, -0.0
    assert explanation_key(model, "m", "p", zero) == explanation_key(model, "m", "p", negative)
    nan_a, nan_b = row.copy(), row.copy()
    nan_a[1] = np.nan
    nan_b[1] = np.frombuffer(np.array([0x7FF8000000000001], dtype="<u8").tobytes(), "<f8")[0]
    assert np.isnan(nan_b[1])
    assert explanation_key(model, "m", "p", nan_a) == explanation_key(model, "m", "p", nan_b)


def test_entry_bound_evicts_the_oldest(backend: str, tmp_path: Path) -> None:
    store = make_cache(backend, tmp_path, cache_max_entries=5)
    keys = [f"{i:064x}" for i in range(12)]
    for i, key in enumerate(keys):
        store.put(key, record(i))
        time.sleep(0.002)  # distinct write times: "oldest" is well defined
    stats = store.stats()
    assert stats.entries <= 5 and stats.evictions >= 7
    assert store.get(keys[-1]) == record(11)
    assert store.get(keys[0]) is None
    store.close()


def test_age_bound_evicts(backend: str, tmp_path: Path) -> None:
    store = make_cache(backend, tmp_path, cache_max_age=0.3)
    store.put("c" * 64, record(3))
    assert store.get("c" * 64) == record(3)
    time.sleep(0.6)
    assert store.get("c" * 64) is None
    stats = store.stats()
    assert stats.evictions >= 1 and stats.entries == 0
    store.close()


def test_byte_bound_evicts_on_disk(tmp_path: Path) -> None:
    store = make_cache("disk", tmp_path, cache_max_bytes=2000)
    assert isinstance(store, DiskCache)
    for i in range(40):
        store.put(f"{i:064x}", record(i))
    stats = store.stats()
    assert stats.bytes is not None and stats.bytes <= 2000 and stats.evictions > 0
    assert store.get(f"{39:064x}") == record(39)


def _writer(backend: str, root: str, worker: int, n: int) -> None:
    store = make_cache(backend, Path(root), cache_max_entries=60)
    for i in range(n):
        # Both processes write the same keys, with their own content.
        store.put(f"{i % 80:064x}", {"worker": worker, "i": i, "pad": "x" * (i % 50)})


def test_processes_share_the_cache_safely(backend: str, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(backend, str(tmp_path), w, 300)) for w in (1, 2)]
    for p in procs:
        p.start()
    store = make_cache(backend, tmp_path, cache_max_entries=60)
    seen = 0
    while any(p.is_alive() for p in procs):
        for found in store.get_many([f"{i:064x}" for i in range(80)]):
            if found is not None:  # never a torn entry: whole JSON from one writer
                assert found["worker"] in (1, 2) and found["pad"] == "x" * (found["i"] % 50)
                seen += 1
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert seen > 0
    # Each process sweeps on its own count; another's writes since can add its slack (10%).
    assert store.stats().entries <= 60 + 2 * 6
    if backend == "disk":
        leftovers = [
            p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.suffix != ".json"
        ]
        assert leftovers == []
        for path in (tmp_path / "cache").rglob("*.json"):
            json.loads(path.read_text())
    store.close()


def test_disk_entries_are_private_to_the_server_user(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    store = DiskCache(root, max_entries=10, max_bytes=1 << 20, max_age=60)
    key = "ab" * 32
    store.put(key, {"values": [[0.5]]})
    entry = root / key[:2] / f"{key}.json"
    assert entry.stat().st_mode & 0o777 == 0o600
    assert (root / key[:2]).stat().st_mode & 0o777 == 0o700
    assert root.stat().st_mode & 0o777 == 0o700
