"""``ModelRepository.scan()``: which versions load, serve, wait, fail and go away."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost as xgb
import yaml

from xserve.errors import ModelNotFound, ModelNotReady
from xserve.repository.layout import is_version_name, next_version, version_folders, version_key
from xserve.repository.repository import ModelRepository
from xserve.repository.version import ModelVersion, load_version
from xserve.repository.watcher import watch

FEATURES = [{"name": n} for n in ("a", "b", "c")]


def add_version(root: Path, name: str, version: str, bias: float = 0.0) -> Path:
    """A small XGBoost regressor whose predictions differ by ``bias`` between versions."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    booster = xgb.train(
        {"objective": "reg:squarederror", "base_score": bias, "max_depth": 2},
        xgb.DMatrix(x, label=x[:, 0] + bias),
        num_boost_round=2,
    )
    folder = root / name / version
    folder.mkdir(parents=True)
    booster.save_model(str(folder / "model.json"))
    manifest = {"artifact": "model.json", "features": FEATURES}
    (folder / "xserve.yaml").write_text(yaml.safe_dump(manifest))
    return folder


def corrupt(folder: Path) -> None:
    (folder / "model.json").write_text('{"not": "a booster"')


def states(repo: ModelRepository, name: str) -> dict[str, str]:
    return {e.version: e.state for e in repo.versions(name)}


def serving(repo: ModelRepository, name: str) -> str:
    return repo.get(name).version


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "models"


def test_newest_ready_version_serves(root: Path) -> None:
    for v in ("1", "2", "9", "10"):
        add_version(root, "credit", v)
    repo = ModelRepository(root)
    repo.scan()
    assert states(repo, "credit") == {"1": "ready", "2": "ready", "9": "ready", "10": "ready"}
    assert [e.version for e in repo.versions("credit")] == ["1", "2", "9", "10"]
    assert serving(repo, "credit") == "10"  # numeric order, not text order
    assert repo.get("credit", "2").version == "2"
    assert isinstance(repo.get("credit"), ModelVersion)
    assert repo.names() == ["credit"]


def test_broken_newer_version_fails_and_the_previous_keeps_serving(root: Path) -> None:
    add_version(root, "credit", "1")
    corrupt(add_version(root, "credit", "2"))
    repo = ModelRepository(root)
    repo.scan()
    assert states(repo, "credit") == {"1": "ready", "2": "failed"}
    assert serving(repo, "credit") == "1"
    (broken,) = [e for e in repo.versions("credit") if e.version == "2"]
    assert broken.error is not None and "model.json" in broken.error and broken.model is None
    with pytest.raises(ModelNotReady, match=r"model\.json"):
        repo.get("credit", "2")
    (listing,) = repo.describe()
    assert listing["serving_version"] == "1"
    assert listing["versions"][1] == {"version": "2", "state": "failed", "error": broken.error}
    assert listing["versions"][0]["state"] == "ready"
    assert listing["versions"][0]["flavor"] == "xgboost"


def test_a_broken_manifest_does_not_stop_other_models(root: Path) -> None:
    add_version(root, "good", "1")
    bad = add_version(root, "bad", "1")
    (bad / "xserve.yaml").write_text("artifact: model.json\nfeatures: [{name: a}]\n")
    repo = ModelRepository(root)
    repo.scan()
    assert states(repo, "bad") == {"1": "failed"} and states(repo, "good") == {"1": "ready"}
    assert "features" in (repo.versions("bad")[0].error or "")
    with pytest.raises(ModelNotReady):
        repo.get("bad")
    assert serving(repo, "good") == "1"


def test_a_new_version_is_pending_then_ready(root: Path) -> None:
    add_version(root, "credit", "1")
    repo = ModelRepository(root)
    repo.scan()
    add_version(root, "credit", "2")
    repo.scan()
    assert states(repo, "credit") == {"1": "ready", "2": "pending"}
    assert serving(repo, "credit") == "1"  # no failed request while it waits
    with pytest.raises(ModelNotReady, match="not loaded yet"):
        repo.get("credit", "2")
    repo.scan()
    assert states(repo, "credit") == {"1": "ready", "2": "ready"}
    assert serving(repo, "credit") == "2"


def test_a_version_still_being_copied_stays_pending(root: Path) -> None:
    add_version(root, "credit", "1")
    repo = ModelRepository(root)
    repo.scan()
    folder = add_version(root, "credit", "2")
    repo.scan()
    (folder / "background.csv").write_text("a,b,c\n1,2,3\n")  # the copy goes on
    repo.scan()
    assert states(repo, "credit")["2"] == "pending"
    repo.scan()
    assert states(repo, "credit")["2"] == "ready"
    assert repo.get("credit", "2").background is not None


def test_a_new_model_is_pending_then_ready(root: Path) -> None:
    add_version(root, "credit", "1")
    repo = ModelRepository(root)
    repo.scan()
    add_version(root, "fraud", "1")
    repo.scan()
    assert states(repo, "fraud") == {"1": "pending"}
    with pytest.raises(ModelNotReady):
        repo.get("fraud")
    repo.scan()
    assert serving(repo, "fraud") == "1" and repo.names() == ["credit", "fraud"]


def test_a_removed_version_is_dropped(root: Path) -> None:
    add_version(root, "credit", "1")
    newest = add_version(root, "credit", "2")
    repo = ModelRepository(root)
    repo.scan()
    assert serving(repo, "credit") == "2"
    shutil.rmtree(newest)
    repo.scan()
    assert states(repo, "credit") == {"1": "ready"}
    assert serving(repo, "credit") == "1"
    with pytest.raises(ModelNotFound):
        repo.get("credit", "2")


def test_a_removed_model_is_dropped(root: Path) -> None:
    add_version(root, "credit", "1")
    add_version(root, "fraud", "1")
    repo = ModelRepository(root)
    repo.scan()
    shutil.rmtree(root / "fraud")
    repo.scan()
    assert repo.names() == ["credit"]
    with pytest.raises(ModelNotFound):
        repo.get("fraud")
    with pytest.raises(ModelNotFound):
        repo.versions("fraud")


def test_a_fixed_broken_version_is_retried_when_its_files_change(root: Path) -> None:
    add_version(root, "credit", "1")
    broken = add_version(root, "credit", "2")
    good_artifact = (broken / "model.json").read_bytes()
    corrupt(broken)
    repo = ModelRepository(root)
    repo.scan()
    assert states(repo, "credit")["2"] == "failed"
    (broken / "model.json").write_bytes(good_artifact)
    repo.scan()
    assert states(repo, "credit")["2"] == "pending"
    repo.scan()
    assert states(repo, "credit")["2"] == "ready"
    assert serving(repo, "credit") == "2"


def test_a_broken_version_is_not_reloaded_while_unchanged(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One failure reported (one warning), and the same failed entry kept by each scan."""
    corrupt(add_version(root, "credit", "1"))
    repo = ModelRepository(root)
    with caplog.at_level(logging.WARNING, logger="xserve.repository"):
        repo.scan()
        (failed,) = repo.versions("credit")
        for _ in range(2):
            repo.scan()
            (entry,) = repo.versions("credit")
            assert entry is failed  # not loaded again: a load makes a new entry
    assert failed.state == "failed" and failed.error
    loads = [r for r in caplog.records if "credit version 1 failed to load" in r.getMessage()]
    assert len(loads) == 1


def test_a_served_version_is_not_reloaded(root: Path) -> None:
    folder = add_version(root, "credit", "1")
    repo = ModelRepository(root)
    repo.scan()
    model = repo.get("credit")
    corrupt(folder)  # a served folder is immutable: changes are not picked up
    repo.scan()
    repo.scan()
    assert repo.get("credit") is model and states(repo, "credit") == {"1": "ready"}


def test_non_numeric_and_hidden_folders_are_ignored(root: Path) -> None:
    add_version(root, "credit", "1")
    for odd in ("latest", "v2", "2a", ".3", "_4", "²", "-5"):
        add_version(root, "credit", odd)
    add_version(root, ".hidden", "1")
    add_version(root, "_staging", "1")
    (root / "credit" / "6").mkdir()  # no manifest (yet)
    (root / "README.txt").write_text("not a model")
    repo = ModelRepository(root)
    repo.scan()
    assert repo.names() == ["credit"]
    assert states(repo, "credit") == {"1": "ready"}
    assert serving(repo, "credit") == "1"


def test_a_failing_load_hook_fails_the_version_only(root: Path) -> None:
    add_version(root, "credit", "1")
    add_version(root, "credit", "2")

    def hook(model: ModelVersion) -> ModelVersion:
        if model.version == "2":
            raise RuntimeError("explainer setup exploded")
        return model

    repo = ModelRepository(root, on_load=[hook])
    repo.scan()
    assert states(repo, "credit") == {"1": "ready", "2": "failed"}
    assert "exploded" in (repo.versions("credit")[1].error or "")
    assert serving(repo, "credit") == "1"


def test_scanning_one_model_leaves_the_others(root: Path) -> None:
    add_version(root, "credit", "1")
    add_version(root, "fraud", "1")
    repo = ModelRepository(root)
    repo.scan()
    add_version(root, "fraud", "2")
    repo.scan(only="fraud")
    repo.scan(only="fraud")
    assert repo.names() == ["credit", "fraud"]
    assert serving(repo, "credit") == "1" and serving(repo, "fraud") == "2"


def test_an_unknown_model_and_a_missing_root(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "nowhere")
    repo.scan()
    assert repo.scanned and repo.names() == [] and repo.describe() == []
    with pytest.raises(ModelNotFound):
        repo.get("credit")


@pytest.mark.parametrize(
    ("versions", "expected"),
    [
        (["10", "9", "1"], ["1", "9", "10"]),
        (["2", "x", "1"], ["x", "1", "2"]),
    ],
)
def test_version_key(versions: list[str], expected: list[str]) -> None:
    assert sorted(versions, key=version_key) == expected


def test_predictions_come_from_the_serving_version(root: Path) -> None:
    add_version(root, "credit", "1", bias=0.0)
    add_version(root, "credit", "2", bias=100.0)
    repo = ModelRepository(root)
    repo.scan()
    x: Any = np.zeros((2, 3))
    assert (repo.get("credit").runtime.predict(x) > 50).all()
    assert (repo.get("credit", "1").runtime.predict(x) < 50).all()


def test_load_hooks_chain_and_what_they_return_is_served(root: Path) -> None:
    add_version(root, "credit", "1")

    def tag(model: ModelVersion) -> ModelVersion:
        return dataclasses.replace(model, inline_error="first")

    def append(model: ModelVersion) -> ModelVersion:
        return dataclasses.replace(model, inline_error=f"{model.inline_error}, second")

    repo = ModelRepository(root, on_load=[tag, append])
    repo.scan()
    served = repo.get("credit")
    assert served.inline_error == "first, second"
    assert repo.get("credit", "1") is served and repo.versions("credit")[0].model is served


def test_a_loaded_version_is_frozen_has_no_inline_explainer_and_hashes_by_identity(
    root: Path,
) -> None:
    model = load_version("credit", "1", add_version(root, "credit", "1"))
    assert model.inline is None and model.inline_error is None  # attach_inline builds it
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.inline_error = "changed"  # type: ignore[misc]
    copy = dataclasses.replace(model)
    assert copy != model and hash(copy) != hash(model) and model == model
    keyed = weakref.WeakKeyDictionary({model: 1, copy: 2})
    assert keyed[model] == 1 and keyed[copy] == 2


def test_the_version_folder_rule(root: Path) -> None:
    assert [n for n in ("1", "10", "²", "1a", ".2", "", "-3") if is_version_name(n)] == ["1", "10"]
    model_dir = root / "credit"
    assert version_folders(model_dir) == {} and next_version(model_dir) == "1"
    for v in ("2", "10", "9"):
        add_version(root, "credit", v)
    (model_dir / "11").mkdir()  # no manifest (yet): not served, but its number is taken
    (model_dir / "²").mkdir()
    (model_dir / ".deploy-12").mkdir()
    (model_dir / "13").write_text("a file")
    assert list(version_folders(model_dir)) == ["2", "9", "10"]
    assert list(version_folders(model_dir, with_manifest=False)) == ["2", "9", "10", "11"]
    assert version_folders(model_dir)["9"] == model_dir / "9"
    assert next_version(model_dir) == "12"


def test_the_watcher_rescans_until_cancelled(root: Path) -> None:
    add_version(root, "credit", "1")
    repo = ModelRepository(root)
    repo.scan()
    add_version(root, "credit", "2")

    async def main() -> None:
        task = asyncio.create_task(watch(repo, 0.01))
        for _ in range(500):  # pending on one scan, ready on the next
            await asyncio.sleep(0.01)
            if states(repo, "credit").get("2") == "ready":
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert serving(repo, "credit") == "2"


def test_a_version_that_loads_too_long_fails_and_holds_up_no_other(root: Path) -> None:
    """XSERVE_LOAD_TIMEOUT: a load that hangs (here a hook stuck on an event, as a read
    from a hung mount would be) marks its version failed; the others load meanwhile."""
    add_version(root, "credit", "1")
    add_version(root, "credit", "2")
    add_version(root, "fraud", "1")
    stuck = threading.Event()

    def hook(model: ModelVersion) -> ModelVersion:
        if (model.name, model.version) == ("credit", "2"):
            stuck.wait(30)
        return model

    repo = ModelRepository(root, on_load=[hook], load_timeout=0.5)
    started = time.monotonic()
    repo.scan()
    elapsed = time.monotonic() - started
    stuck.set()
    assert elapsed < 5, elapsed
    assert states(repo, "credit") == {"1": "ready", "2": "failed"}
    assert states(repo, "fraud") == {"1": "ready"}
    assert "XSERVE_LOAD_TIMEOUT" in (repo.versions("credit")[1].error or "")
    assert serving(repo, "credit") == "1"
    repo.scan()  # unchanged files: the failed version is not loaded again
    assert states(repo, "credit") == {"1": "ready", "2": "failed"}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_deployment_file_neither_blocks_the_scan_nor_changes_the_policy(
    root: Path,
) -> None:
    add_version(root, "credit", "1")
    add_version(root, "credit", "2")
    os.mkfifo(root / "credit" / "deployment.yaml")
    repo = ModelRepository(root)
    scan = threading.Thread(target=repo.scan, daemon=True)
    scan.start()
    scan.join(20)
    if scan.is_alive():  # unblock the reader before failing
        os.close(os.open(root / "credit" / "deployment.yaml", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the scan blocked on a FIFO deployment.yaml")
    assert serving(repo, "credit") == "2"  # the policy in force stays `latest`
    assert "not a regular file" in repo.traffic("credit")["error"]
