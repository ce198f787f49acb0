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


REFERENCE_SPLIT = SHARED / "baselines" / "ml-latest-small.split.csv"


def interaction_frame(rows: list[tuple]):
    """An interactions DataFrame of ``(user_id, item_id, timestamp)`` rows."""
    import pandas as pd

    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


@pytest.fixture(scope="session")
def real_split():
    """The leave-one-out split of the team's shared ml-latest-small (skipped where ../shared is absent)."""
    if not (SHARED_DATA / "interactions.csv").is_file() or not REFERENCE_SPLIT.is_file():
        pytest.skip(f"the shared ml-latest-small data is not at {SHARED} (it lives beside the repository)")
    from mmrec.data import ItemIndex, leave_one_out, load_interactions

    items = ItemIndex.from_catalog(SHARED_DATA / "items.csv")
    return leave_one_out(load_interactions(SHARED_DATA / "interactions.csv", items))


def copy_store(source: Path, target: Path) -> Path:
    """A copy of the store folder ``source`` at ``target`` (returned), its database copied through SQLite's backup
    API. Copying the live database file as a file would open and close it outside SQLite, which drops every POSIX
    lock this process holds on it (https://sqlite.org/howtocorrupt.html, 2.2): a later write to ``source`` from
    another process (the refresh script) then corrupts what this process reads."""
    import shutil
    import sqlite3

    from mmrec.store import DB_NAME

    shutil.copytree(source, target, ignore=shutil.ignore_patterns(f"{DB_NAME}*"))
    src, dst = sqlite3.connect(source / DB_NAME), sqlite3.connect(target / DB_NAME)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    return target


_FLOCK = "hhxxxxqqixxxx"  # Linux struct flock: l_type, l_whence, l_start, l_len, l_pid


def store_write_locked(db) -> bool:
    """Whether a process holds the store's write lock: in WAL mode SQLite takes it (``BEGIN IMMEDIATE``) as a POSIX
    lock on byte 120 of the ``-shm`` file (https://sqlite.org/walformat.html, "Locking"). Asked with ``F_GETLK``,
    which takes no lock. The kill tests use it to SIGKILL a writer in the middle of a commit."""
    import fcntl
    import os
    import struct

    try:
        fd = os.open(f"{db}-shm", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 120, 1, 0)
        return struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, probe))[0] != fcntl.F_UNLCK
    finally:
        os.close(fd)
