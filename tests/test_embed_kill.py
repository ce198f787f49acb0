"""`mmrec embed` killed with SIGKILL at several points leaves a sound store, and a rerun ends byte-identical to a
clean run.

The child is the real command line (``python -m mmrec.cli embed``); the test watches the store from outside (the
number of committed items) and kills the child once a given number of chunks is committed, or as soon as the store
file exists. After each kill: ``PRAGMA integrity_check`` passes, the store opens, only whole chunks are there (a
prefix of the catalogue), and a rerun to completion leaves text features and hashes byte-identical to an
uninterrupted run. ``scripts/kill_matrix.py`` runs the same check at 20+ points (outside CI).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mmrec import Store
from mmrec.embed import EmbedConfig, embed_catalog
from mmrec.encoders import TextEncoder, TextEncoderConfig

from .conftest import ASSETS, REPO

CHUNK = 8
N_CHUNKS = 6
COLUMNS = ["title", "genres"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The catalogue, a CPU text encoder (the children run on the CPU too: one device, byte-comparable features)
    and the reference store of one uninterrupted run."""
    import torch

    folder = tmp_path_factory.mktemp("kill")
    items = pd.read_csv(ASSETS / "items.csv", dtype=str, keep_default_na=False)
    items[["item_id", *COLUMNS]].head(CHUNK * N_CHUNKS).to_csv(folder / "items.csv", index=False)
    encoder = TextEncoder(TextEncoderConfig(device="cpu"))
    config = EmbedConfig(use_images=False, text_columns=COLUMNS, chunk_size=CHUNK)
    embed_catalog(folder / "items.csv", folder / "reference", config, text_encoder=encoder)
    with Store(folder / "reference") as store:
        ids, matrix, present = store.feature_matrix("text")
        reference = (ids, matrix.tobytes(), present.tobytes(), store.item_hashes())
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return folder, encoder, config, reference, env


def _committed(db: Path) -> int:
    """Items the store has committed, read from outside the child (-1: no store file yet; 0 while the schema is
    being written)."""
    if not db.is_file():
        return -1
    connection = sqlite3.connect(db, timeout=1.0)
    try:
        return connection.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    except sqlite3.OperationalError:  # no such table yet, or locked while the schema is written
        return 0
    finally:
        connection.close()


def kill_embed(catalog: Path, store_dir: Path, env: dict, after_items: int, timeout: float = 120) -> int:
    """Run ``mmrec embed`` and SIGKILL it once ``after_items`` items are committed (``0``: once the store file
    exists). Returns the child's exit status (``-SIGKILL`` when it was killed)."""
    child = subprocess.Popen([sys.executable, "-m", "mmrec.cli", "embed", str(catalog), "--store", str(store_dir),
                              "--no-images", "--text-columns", ",".join(COLUMNS), "--chunk-size", str(CHUNK),
                              "--device", "cpu"], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    db = store_dir / "mmrec.sqlite"
    try:
        while child.poll() is None and time.monotonic() < deadline:
            if _committed(db) >= after_items:
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        return child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.parametrize("chunks_done", [-1, 1, 3, 4], ids=["store-created", "1-chunk", "3-chunks", "4-chunks"])
def test_killed_embed_leaves_a_sound_store_and_a_rerun_matches_a_clean_run(setup, tmp_path, chunks_done):
    folder, encoder, config, reference, env = setup
    store_dir = tmp_path / "store"
    status = kill_embed(folder / "items.csv", store_dir, env, max(chunks_done, 0) * CHUNK)
    assert status == -signal.SIGKILL, f"the child was not killed (exit status {status})"

    db = store_dir / "mmrec.sqlite"
    assert db.is_file()
    connection = sqlite3.connect(db)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        connection.close()
    with Store(store_dir) as store:
        committed = store.item_ids()
        hashes = store.item_hashes()
    assert len(committed) % CHUNK == 0 and len(committed) >= max(chunks_done, 0) * CHUNK  # whole chunks only
    assert committed == reference[0][: len(committed)]
    assert hashes == {i: reference[3][i] for i in committed}

    report = embed_catalog(folder / "items.csv", store_dir, config, text_encoder=encoder)
    assert (report.unchanged, report.embedded) == (len(committed), CHUNK * N_CHUNKS - len(committed))
    with Store(store_dir) as store:
        ids, matrix, present = store.feature_matrix("text")
        assert (ids, matrix.tobytes(), present.tobytes(), store.item_hashes()) == reference
