from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import DEMO_MODELS, Server, copy_demo_models, running_server


@pytest.fixture(scope="session")
def demo_models() -> Path:
    return DEMO_MODELS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server over a private copy of the demo models, shared by a test module."""
    root = copy_demo_models(tmp_path_factory.mktemp("repo") / "models")
    with running_server(root) as srv:
        yield srv
