from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import DEMO_MODELS, Server, copy_demo_models, running_server

_STATE = pytest.StashKey[tuple[Path, pytest.MonkeyPatch]]()


def pytest_configure(config: pytest.Config) -> None:
    """Every default path relative to the working directory (the model repository, the
    audit log, the explanation cache and the job states beside it, MLflow's and
    Hypothesis's stores) and numba's cache point into a temporary folder instead, for the
    tests and the processes they start. Set before collection: some are read on import."""
    root = Path(tempfile.mkdtemp(prefix="xserve-tests-state-"))
    env = pytest.MonkeyPatch()
    env.setenv("XSERVE_MODELS_DIR", str(copy_demo_models(root / "models")))
    env.setenv("XSERVE_AUDIT_URL", f"sqlite:///{root / 'audit' / 'audit.db'}")
    env.setenv("XSERVE_CACHE_URL", str(root / "explainer_cache"))
    env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    env.setenv("HYPOTHESIS_STORAGE_DIRECTORY", str(root / "hypothesis"))
    env.setenv("NUMBA_CACHE_DIR", str(root / "numba"))  # else beside xserve's sources
    config.stash[_STATE] = (root, env)


def pytest_unconfigure(config: pytest.Config) -> None:
    root, env = config.stash[_STATE]
    env.undo()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_models() -> Path:
    """The demo models, read only: copy them (``copy_demo_models``) to change them."""
    return DEMO_MODELS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server over a private copy of the demo models, shared by a test module."""
    root = copy_demo_models(tmp_path_factory.mktemp("repo") / "models")
    with running_server(root) as srv:
        yield srv
