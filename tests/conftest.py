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


def write_movielens_slice(folder: Path, n_items: int, max_user: int) -> Path:
    """The ``n_items`` most-rated bundled movies with users ``1..max_user``'s ratings and tags of them, written as
    items.csv, interactions.csv and tags.csv into ``folder`` (returned)."""
    import pandas as pd

    interactions = pd.read_csv(ASSETS / "interactions.csv")
    top = interactions.item_id.value_counts().index[:n_items]
    items = pd.read_csv(ASSETS / "items.csv", dtype=str, keep_default_na=False)
    items[items.item_id.astype(int).isin(top)].to_csv(folder / "items.csv", index=False)
    for name, frame in (("interactions.csv", interactions), ("tags.csv", pd.read_csv(ASSETS / "tags.csv"))):
        frame[frame.item_id.isin(top) & (frame.user_id <= max_user)].to_csv(folder / name, index=False)
    return folder


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
