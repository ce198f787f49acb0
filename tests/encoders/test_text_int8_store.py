"""A store embedded with ``mmrec embed --precision int8``: its texts carry the int8 encoder version, and texts embedded
later for it (tags read by training, tag events folded in while serving) go through the same int8 encoder.

The real command line in its own process (``python -m mmrec.cli embed``), the real MiniLM and the real ONNX Runtime;
the int8 model is built once into ``STORE/encoders/`` by that embed and reused by everything after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mmrec import Recommender, Store
from mmrec.cli import EXIT_FAILED, main
from mmrec.encoders import Precision, TextEncoder, onnx_int8
from mmrec.features import embed_event_texts, store_text_encoder
from mmrec.train.config import TrainConfig
from mmrec.train.jobs import train_store

from ..conftest import ASSETS, REPO

N_ITEMS = 60  # the most-rated bundled movies; users: everyone who tagged one of them, and users 1..30


def _write_tagged_slice(folder):
    """items.csv, interactions.csv and tags.csv of the ``N_ITEMS`` most-rated movies, for users 1..30 and every user
    who tagged one of them (so training reads tag texts)."""
    interactions = pd.read_csv(ASSETS / "interactions.csv")
    tags = pd.read_csv(ASSETS / "tags.csv")
    top = interactions.item_id.value_counts().index[:N_ITEMS]
    users = set(tags[tags.item_id.isin(top)].user_id) | set(range(1, 31))
    items = pd.read_csv(ASSETS / "items.csv", dtype=str, keep_default_na=False)
    items[items.item_id.astype(int).isin(top)].to_csv(folder / "items.csv", index=False)
    for name, frame in (("interactions.csv", interactions), ("tags.csv", tags)):
        frame[frame.item_id.isin(top) & frame.user_id.isin(users)].to_csv(folder / name, index=False)
    return folder


@pytest.fixture(scope="module")
def int8_store(tmp_path_factory):
    """``(data folder, store folder, the embed's JSON summary)`` of a catalogue embedded by ``python -m mmrec.cli
    embed --precision int8`` (device auto: int8 means the CPU)."""
    pytest.importorskip("onnxruntime", reason="the int8 extra (pip install 'mmrec[int8]') is not installed")
    folder = _write_tagged_slice(tmp_path_factory.mktemp("int8-store"))
    store_dir = folder / "store"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "mmrec.cli", "embed", str(folder / "items.csv"), "--store",
                           str(store_dir), "--no-images", "--text-columns", "title,genres", "--precision", "int8",
                           "--json"], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return folder, store_dir, json.loads(done.stdout.splitlines()[-1])


def _stored_text_version(store_dir) -> str:
    with Store(store_dir, create=False) as store:
        (version,) = store.encoders()["text"]
    return version


def test_cli_int8_embed_stamps_the_int8_encoder_version(int8_store):
    _, store_dir, summary = int8_store
    assert summary["embedded"] == N_ITEMS and not summary["rejected"] and summary["text_only"] == N_ITEMS
    fp32_version = TextEncoder().version  # reads the weights' fingerprint only: no model is loaded
    assert _stored_text_version(store_dir) == fp32_version + onnx_int8.VERSION_SUFFIX
    # the quantised model was built beside the store, keyed by the fp32 version
    assert (onnx_int8.ModelCache(store_dir / "encoders").entry(fp32_version) / "model.onnx").is_file()


def test_texts_embedded_later_for_the_store_use_its_int8_encoder(int8_store, tmp_path):
    _, store_dir, _ = int8_store
    entries = sorted((store_dir / "encoders").iterdir())
    with Store(store_dir, create=False) as store:
        encoder = store_text_encoder(store)
        assert encoder.precision is Precision.INT8 and encoder.cache_dir == store_dir / "encoders"
        assert encoder.version == _stored_text_version(store_dir)
        text = "a tag no one has written before"
        # before the int8 store encoder, this refused: "item texts were embedded with ...+int8-ort, but the
        # installed text encoder is ..."
        vectors = embed_event_texts(store, [text])
        np.testing.assert_allclose(vectors, encoder.encode([text]), atol=1e-6)
        key = hashlib.sha256(f"{encoder.version}\0{text}".encode()).hexdigest()
        assert key in store.cached_texts([key])
    assert sorted((store_dir / "encoders").iterdir()) == entries  # the cached model was reused, nothing rebuilt
    with Store(tmp_path / "empty") as empty:  # no stored texts: the default encoder
        assert store_text_encoder(empty).precision is not Precision.INT8


def test_training_and_serving_embed_tag_texts_with_the_int8_encoder(int8_store):
    folder, store_dir, _ = int8_store
    version = _stored_text_version(store_dir)
    # training embeds tags.csv's texts with the store's encoder (no encoder passed in)
    train_store(store_dir, folder / "interactions.csv", folder / "tags.csv", TrainConfig(epochs=1, show_progress=False),
                log=None)
    rec = Recommender.load(store_dir, device="cpu")
    try:
        assert "tag" in rec.text_events
        user = rec.store.logged_users()[0]
        item = rec.item_ids[0]
        # a tag text training never saw: folding it in encodes it (EventFolder's lazily built encoder), as int8
        rec.observe(user, item, event="tag", timestamp=2_000_000_000, text="A Tag Nobody Wrote In Training 7")
        stored_text = rec.store.user_events([user])[user][-1][3]
        key = hashlib.sha256(f"{version}\0{stored_text}".encode()).hexdigest()
        assert stored_text and key in rec.store.cached_texts([key])
        assert rec.store.encoders()["text"] == [version]
    finally:
        rec.store.close()


@pytest.mark.parametrize("precision, device, reasons", [
    # no CUDA here: --device is refused first; with CUDA: int8 runs on the CPU only
    ("int8", "cuda", ("no CUDA device on this machine", "precision='int8' runs on the CPU only")),
    ("fp16", "cpu", ("precision='fp16' needs a CUDA device",)),
])
def test_a_precision_the_device_cannot_run_exits_1_before_the_store_exists(precision, device, reasons, tmp_path,
                                                                           capsys):
    catalog = tmp_path / "items.csv"
    pd.read_csv(ASSETS / "items.csv", dtype=str, keep_default_na=False).head(5).to_csv(catalog, index=False)
    store_dir = tmp_path / "store"
    code = main(["embed", str(catalog), "--store", str(store_dir), "--no-images", "--precision", precision,
                 "--device", device, "--json"])
    captured = capsys.readouterr()
    assert code == EXIT_FAILED
    assert any(reason in captured.err for reason in reasons), captured.err
    assert json.loads(captured.out.splitlines()[-1])["exit"] == EXIT_FAILED
    assert not store_dir.exists()
