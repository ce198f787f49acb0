"""Shared fixtures: real data paths, and encoders loaded once per test session (loading costs seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "assets" / "ml-latest-small"
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data" / "ml-latest-small"
POSTERS = SHARED_DATA / "images"


def require_shared(path: Path = POSTERS) -> Path:
    """Skip (with the reason) on a machine without the team's ../shared folder: a user's fresh clone."""
    if not path.exists():
        pytest.skip(f"needs {path} (the team's shared data folder beside the repo); not present on this machine")
    return path


@pytest.fixture(scope="session")
def posters() -> Path:
    return require_shared(POSTERS)


@pytest.fixture(scope="session")
def text_encoder():
    from mmrec.encoders import TextEncoder

    return TextEncoder()


@pytest.fixture(scope="session")
def image_encoder():
    from mmrec.encoders import ImageEncoder

    return ImageEncoder()
