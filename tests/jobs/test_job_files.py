"""The in-process queue's files: job states 0600 in 0700 folders (a folder made wider
before is narrowed), holding no input once a job ended, whether it succeeded or failed."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tests.server import DEMO_MODELS, copy_demo_models
from xserve.jobs.base import JobSpec, encode_rows
from xserve.jobs.inprocess import InProcessQueue
from xserve.repository.version import load_version
from xserve.settings import Settings

SECRET = 876.543219  # a value no demo row holds: found in a file, it leaked


def spec(x: npt.NDArray[np.float64]) -> JobSpec:
    model = load_version("iris", "1", DEMO_MODELS / "iris" / "1")
    return JobSpec(
        model="iris",
        version="1",
        digest=model.digest,
        method="kernel_shap",
        params={"nsamples": 60, "background": 5},
        rows=encode_rows(x),
        caller="alice",
    )


def test_job_files_are_private_and_keep_no_inputs_once_ended(tmp_path: Path) -> None:
    models = copy_demo_models(tmp_path / "models")
    jobs = tmp_path / "jobs"
    jobs.mkdir(mode=0o755)  # made by someone else, too wide
    jobs.chmod(0o755)
    settings = Settings(
        models_dir=models, cache_url=str(tmp_path / "cache"), jobs_dir=jobs, job_workers=1
    )
    queue = InProcessQueue(settings)
    try:
        good = np.array([[SECRET, 3.0, 1.4, 0.2], [5.0, SECRET, 1.3, 0.3]])
        ok = queue.wait(queue.submit(spec(good)), 60)
        assert ok.status == "succeeded" and ok.result is not None, ok.error
        assert len(ok.result["explanations"]) == 2
        bad = queue.wait(queue.submit(spec(np.array([[SECRET, SECRET]]))), 60)  # 2 of 4 features
        assert bad.status == "failed" and bad.error
        assert queue.active.count() == 0  # both ended
    finally:
        queue.close()
    files = [p for p in jobs.rglob("*") if p.is_file()]
    folders = [jobs, *(p for p in jobs.rglob("*") if p.is_dir())]
    assert len([p for p in files if p.suffix == ".json"]) == 2
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert str(SECRET).encode() not in path.read_bytes(), path
    for folder in folders:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
