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


def embed_text_only(folder: Path, store_dir: Path, text_encoder) -> Path:
    """Embed ``folder/items.csv`` (from :func:`write_movielens_slice`) into ``store_dir``: title + genres only, the
    columns evaluation may read (``tags`` aggregates tags from after the split)."""
    from mmrec.embed import EmbedConfig, embed_catalog

    embed_catalog(folder / "items.csv", store_dir, EmbedConfig(use_images=False, text_columns=["title", "genres"]),
                  text_encoder=text_encoder)
    return store_dir


def output_dtypes(model, layer_type, run):
    """``run()``'s result and the set of dtypes output by every ``layer_type`` layer of ``model`` meanwhile: bfloat16
    or float16 there shows autocast really ran (weights stay float32, so without autocast they output float32)."""
    seen = set()
    hooks = [m.register_forward_hook(lambda module, args, output: seen.add(output.dtype))
             for m in model.modules() if isinstance(m, layer_type)]
    try:
        result = run()
    finally:
        for hook in hooks:
            hook.remove()
    return result, seen


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
