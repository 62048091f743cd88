"""A version is its folder: the files a manifest names (``artifact``, ``background``, the
``sha256`` keys) are regular files inside the version folder, and no file can stall a scan.

Each refused version is refused by ``load_version`` with the key and the reason, and by a
scan (``ModelRepository``) as a failed version; scans that could hang on a FIFO run in a
thread with a timeout, so that a regression fails instead of hanging the test run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.server import copy_demo_models, running_server
from xserve.errors import ManifestError
from xserve.repository.repository import ModelRepository
from xserve.repository.version import load_version

NAME = "credit-risk"
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return copy_demo_models(tmp_path / "models", [NAME])


@pytest.fixture
def folder(root: Path) -> Path:
    return root / NAME / "1"


def edit(folder: Path, **changes: Any) -> dict[str, Any]:
    path = folder / "xserve.yaml"
    manifest: dict[str, Any] = yaml.safe_load(path.read_text())
    manifest.update(changes)
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return manifest


def move_outside(folder: Path, name: str) -> Path:
    """Move the version's file ``name`` out of the version folder (beside the repository)."""
    outside = folder.parents[2] / f"outside-{name}"
    shutil.move(folder / name, outside)
    return outside


def refused(folder: Path, *fragments: str) -> str:
    with pytest.raises(ManifestError) as info:
        load_version(NAME, folder.name, folder)
    message = info.value.message
    for fragment in fragments:
        assert fragment in message, message
    return message


def scan_within(repo: ModelRepository, seconds: float = 20) -> None:
    """Scan in a thread: a scan that blocks (on a FIFO) fails the test, not hangs it."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            repo.scan()
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        # Unblock the scan (a writer opening and closing a FIFO gives its reader EOF).
        for fifo in (p for p in repo.root.rglob("*") if p.is_fifo()):
            with contextlib.suppress(OSError):  # no reader waiting on this one
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"the scan did not finish within {seconds} s")
    if errors:
        raise errors[0]


def failed_with(root: Path, *fragments: str) -> str:
    repo = ModelRepository(root)
    scan_within(repo)
    (entry,) = repo.versions(NAME)
    assert entry.state == "failed" and entry.model is None
    assert entry.error is not None
    for fragment in fragments:
        assert fragment in entry.error, entry.error
    return entry.error


# -- outside the version folder ---------------------------------------------------------


def test_the_demo_version_loads(folder: Path) -> None:
    assert load_version(NAME, "1", folder).digest


def test_a_parent_relative_artifact_is_refused(folder: Path) -> None:
    move_outside(folder, "model.json")
    edit(folder, artifact="../../../outside-model.json")
    refused(folder, "artifact", "outside the version folder")


def test_an_absolute_artifact_path_is_refused(folder: Path) -> None:
    outside = move_outside(folder, "model.json")
    edit(folder, artifact=str(outside))
    refused(folder, "artifact", "outside the version folder")


def test_an_absolute_path_inside_the_folder_is_the_folder_s_own(folder: Path) -> None:
    edit(folder, artifact=str(folder / "model.json"))
    assert load_version(NAME, "1", folder).flavor == "xgboost"


def test_a_symlink_to_outside_is_refused(root: Path, folder: Path) -> None:
    outside = move_outside(folder, "model.json")
    (folder / "model.json").symlink_to(outside)
    refused(folder, "artifact", "model.json is outside the version folder")
    failed_with(root, "artifact", "outside the version folder")


def test_a_symlink_inside_the_folder_still_loads(folder: Path) -> None:
    (folder / "models").mkdir()
    shutil.move(folder / "model.json", folder / "models" / "model.json")
    (folder / "model.json").symlink_to(Path("models") / "model.json")
    model = load_version(NAME, "1", folder)
    assert model.digest == hashlib.sha256((folder / "models/model.json").read_bytes()).hexdigest()


def test_a_sha256_key_outside_is_refused_and_never_digested(root: Path, folder: Path) -> None:
    passwd = Path("/etc/passwd")
    edit(folder, sha256={str(passwd): "0" * 64})
    message = refused(folder, "sha256./etc/passwd", "outside the version folder")
    error = failed_with(root, "outside the version folder")
    if passwd.is_file():  # the digest is nowhere to be seen
        digest = hashlib.sha256(passwd.read_bytes()).hexdigest()
        assert digest not in message and digest not in error


def test_a_sha256_key_up_and_out_is_refused(folder: Path) -> None:
    shutil.copy2(folder / "background.csv", folder.parents[2] / "outside-background.csv")
    edit(folder, sha256={"../../../outside-background.csv": "0" * 64})
    refused(folder, "sha256.../../../outside-background.csv", "outside the version folder")


def test_a_background_outside_is_refused(folder: Path) -> None:
    move_outside(folder, "background.csv")
    edit(folder, background="../../../outside-background.csv")
    refused(folder, "background", "outside the version folder")


def test_a_default_background_csv_linking_outside_is_refused(folder: Path) -> None:
    outside = move_outside(folder, "background.csv")
    manifest = edit(folder)
    manifest.pop("background", None)
    (folder / "xserve.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    (folder / "background.csv").symlink_to(outside)
    refused(folder, "background", "outside the version folder")


def test_a_folder_artifact_is_only_for_mlflow(folder: Path) -> None:
    (folder / "model").mkdir()
    shutil.move(folder / "model.json", folder / "model" / "model.json")
    edit(folder, artifact="model")  # the demo manifest says flavor: xgboost
    refused(folder, "artifact", "model is not a regular file")


def test_a_folder_artifact_linking_outside_is_refused(folder: Path) -> None:
    (folder / "model").mkdir()
    (folder / "model" / "MLmodel").symlink_to(move_outside(folder, "model.json"))
    edit(folder, artifact="model", flavor="mlflow", trusted=True)
    refused(folder, "artifact", "model/MLmodel is outside the version folder")


def test_a_symlink_loop_is_refused(folder: Path) -> None:
    (folder / "loop").symlink_to("loop")
    edit(folder, artifact="loop")
    refused(folder, "artifact", "loop")


def test_a_stray_symlink_loop_does_not_stop_the_scan(root: Path, folder: Path) -> None:
    (folder / "loop").symlink_to("loop")
    repo = ModelRepository(root)
    scan_within(repo)
    assert [e.state for e in repo.versions(NAME)] == ["ready"]


# -- files that are not regular files ---------------------------------------------------


@needs_fifo
def test_a_fifo_artifact_is_refused_without_blocking_the_scan(root: Path, folder: Path) -> None:
    (folder / "model.json").unlink()
    os.mkfifo(folder / "model.json")
    started = time.monotonic()
    failed_with(root, "artifact", "model.json is not a regular file")
    assert time.monotonic() - started < 20


@needs_fifo
def test_a_fifo_background_is_refused(root: Path, folder: Path) -> None:
    (folder / "background.csv").unlink()
    os.mkfifo(folder / "background.csv")
    failed_with(root, "background", "background.csv is not a regular file")


@needs_fifo
def test_a_fifo_sha256_key_is_refused(root: Path, folder: Path) -> None:
    os.mkfifo(folder / "notes.txt")
    edit(folder, sha256={"notes.txt": "0" * 64})
    failed_with(root, "sha256.notes.txt", "not a regular file")


@needs_fifo
def test_a_fifo_manifest_is_refused(root: Path, folder: Path) -> None:
    (folder / "xserve.yaml").unlink()
    os.mkfifo(folder / "xserve.yaml")
    failed_with(root, "xserve.yaml", "not a regular file")


@needs_fifo
def test_a_fifo_in_an_mlflow_folder_is_refused(folder: Path) -> None:
    (folder / "model").mkdir()
    os.mkfifo(folder / "model" / "MLmodel")
    edit(folder, artifact="model", flavor="mlflow", trusted=True)
    refused(folder, "artifact", "model/MLmodel is not a regular file")


# -- over HTTP --------------------------------------------------------------------------


def test_a_refused_version_is_failed_and_the_previous_one_serves(root: Path) -> None:
    with running_server(root) as server, server.client() as client:
        second = root / NAME / "2"
        second.mkdir()
        shutil.copy2(root / NAME / "1" / "xserve.yaml", second / "xserve.yaml")
        edit(second, artifact="../1/model.json", background="../1/background.csv")
        deadline = time.monotonic() + 30
        while True:
            (model,) = [m for m in client.get("/v1/models").json()["models"] if m["name"] == NAME]
            versions = {v["version"]: v for v in model["versions"]}
            if versions.get("2", {}).get("state") == "failed" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert versions["2"]["state"] == "failed", versions
        assert "artifact: ../1/model.json is outside the version folder" in versions["2"]["error"]
        assert model["serving_version"] == "1"
        assert client.get(f"/v1/models/{NAME}").status_code == 200
