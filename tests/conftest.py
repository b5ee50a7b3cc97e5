import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    "The compatibility fixtures: $MEMLOC_FIXTURES, else ../shared/fixtures beside the repository."
    d = Path(os.environ.get("MEMLOC_FIXTURES", ROOT.parent / "shared" / "fixtures"))
    if not d.is_dir():
        pytest.skip(f"fixtures folder {d} not found (set MEMLOC_FIXTURES)")
    return d
