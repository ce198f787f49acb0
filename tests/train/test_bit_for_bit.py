"""Reference numbers the module restructuring must reproduce: embed + train on a fixed MovieLens slice, compared
with what the code before the refactor (commit 3607949) gave on the CPU.

What is pinned, for a text-only and a text+image store of the same slice (users 1..300, the 400 most-rated
movies, tags as context events, 3 epochs, seed 0, one CPU thread):

- the training summary's validation NDCG@10 and the per-epoch validation NDCG@10 of the training history;
- the stored user interest vectors and item vectors (sorted by id, stacked as float32): shape, float64 sum and sum
  of squares, and the first values of the first row; their sha256 only with ``MMREC_BIT_EXACT=1`` (see below).

The refactor moves code between modules and must not change any result: the same inputs, the same seed, the same
sequence of random draws and floating-point operations. A difference here means behaviour changed (an operation
reordered, a default moved, a random draw added or dropped), not just a file. Only the public API that survives
the refactor is used (``mmrec``'s top level and ``mmrec.encoders``).

Recorded with ``run_slice`` against the old code (a git worktree of 3607949); every variant gave the same sha256 on
repeated runs. Embedding runs on one thread too, so the stored features are the same bits as well.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrec import EmbedConfig, ModelConfig, Store, TrainConfig, embed_catalog, train_store

from ..conftest import POSTERS, require_shared, write_movielens_slice

N_ITEMS, MAX_USER = 400, 300
HEAD = 6  # values of the first row pinned


def _matrix_summary(ids, vectors) -> dict:
    """``vectors`` (one per id) sorted by id and stacked as float32: shape, sha256, float64 sum and sum of squares,
    the first values of the first row."""
    order = sorted(range(len(ids)), key=lambda i: (len(str(ids[i])), str(ids[i])))  # numeric ids in number order
    matrix = np.ascontiguousarray(np.stack([np.asarray(vectors[i], dtype=np.float32) for i in order]))
    as64 = matrix.astype(np.float64)
    return {
        "shape": list(matrix.shape),
        "sha256": hashlib.sha256(matrix.tobytes()).hexdigest(),
        "sum": float(as64.sum()),
        "sum_sq": float((as64 * as64).sum()),
        "head": [float(v) for v in matrix[0, :HEAD]],
        "first_id": str(ids[order[0]]),
    }


def run_slice(tmp_path: Path, with_images: bool, text_encoder, image_encoder=None, posters=None) -> dict:
    """Embed and train the pinned slice in ``tmp_path`` and return the numbers the tests compare."""
    folder = write_movielens_slice(Path(tmp_path), n_items=N_ITEMS, max_user=MAX_USER)
    store_dir = folder / "store"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same order of floating-point sums whatever the machine's core count
    try:
        embed_config = EmbedConfig(use_images=with_images, text_columns=["title", "genres"],
                                   images_root=posters if with_images else None, show_progress=False)
        embed_catalog(folder / "items.csv", store_dir, embed_config, text_encoder=text_encoder,
                      image_encoder=image_encoder if with_images else None)
        config = TrainConfig(epochs=3, patience=3, seed=0, device="cpu", show_progress=False,
                             model=ModelConfig(use_image=with_images))
        summary = train_store(store_dir, folder / "interactions.csv", folder / "tags.csv", config, log=None,
                              text_encoder=text_encoder)
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((store_dir / "model" / "config.json").read_text())["train"]
    store = Store(store_dir)
    users = store.get_users()
    user_ids = list(users)
    item_ids, item_vectors, _ = store.item_vectors()
    return {
        "valid_ndcg@10": float(summary["valid"]["ndcg@10"]),
        # train_store's summary leaves the history out; the saved model's config.json keeps it
        "history_valid_ndcg@10": [float(row["valid_ndcg@10"]) for row in saved["history"]],
        "saved_valid_ndcg@10": float(saved["valid"]["ndcg@10"]),
        "epochs": int(summary["epochs"]),
        "best_epoch": int(summary["best_epoch"]),
        "interest": _matrix_summary(user_ids, [users[u].interest for u in user_ids]),
        "items": _matrix_summary(item_ids, list(item_vectors)),
    }


# Recorded on the old code (commit 3607949), torch 2.14.1, CPU, one thread; the same sha256s on every repeated run.
# History values are rounded to 4 decimals by training itself. 298 of users 1..300 rated one of the 400 movies.
PINNED = {
    "text": {
        "valid_ndcg@10": 0.018212512894111407,
        "history_valid_ndcg@10": [0.0177, 0.0182, 0.0138],
        "epochs": 3,
        "best_epoch": 2,
        "interest": {
            "shape": [298, 128],
            "sha256": "cd699ee8d581360e347ac2be1c25355c6abcc2566644fa7dd89205f10892335e",
            "sum": -234.75769615310128,
            "sum_sq": 891.0143213514099,
            "head": [-0.1242881789803505, 0.19050320982933044, -0.2242012917995453, 0.1522616595029831,
                     -0.04716968163847923, 0.22875505685806274],
            "first_id": "1",
        },
        "items": {
            "shape": [400, 128],
            "sha256": "4d4c8fa8694186a1e71d5386450b72e87c0385e7d288179ffb928dfef0ddcd8e",
            "sum": -5.756894118156197,
            "sum_sq": 51040.88745974154,
            "head": [-0.22642436623573303, -0.21501769125461578, 0.16137845814228058, 0.4712028503417969,
                     -0.29720455408096313, -1.1302005052566528],
            "first_id": "1",
        },
    },
    "text+image": {
        "valid_ndcg@10": 0.02574268236080176,
        "history_valid_ndcg@10": [0.0183, 0.0208, 0.0257],
        "epochs": 3,
        "best_epoch": 3,
        "interest": {
            "shape": [298, 128],
            "sha256": "d12c8b1d35ce0b23a1ade586c0b0b420b4f4de82b06544f0b7121d2932494431",
            "sum": -384.53104471683037,
            "sum_sq": 749.5789125412421,
            "head": [-0.09007954597473145, 0.11530667543411255, -0.2134283185005188, -0.044786181300878525,
                     -0.02871861308813095, -0.08552024513483047],
            "first_id": "1",
        },
        "items": {
            "shape": [400, 128],
            "sha256": "b0fcf18230daee39c4d0f1e0e7a66e8858d1c3ffa59aa063e4b04442dd2972af",
            "sum": -12.28428615645862,
            "sum_sq": 51059.05670948948,
            "head": [-0.23471568524837494, -0.2926838994026184, 0.04950132220983505, 0.26470059156417847,
                     0.004372948780655861, -0.713620126247406],
            "first_id": "1",
        },
    },
}


def _check(got: dict, want: dict) -> None:
    for key in ("valid_ndcg@10", "saved_valid_ndcg@10"):
        assert got[key] == pytest.approx(want["valid_ndcg@10"], rel=0, abs=1e-12), key
    assert len(got["history_valid_ndcg@10"]) == len(want["history_valid_ndcg@10"])
    np.testing.assert_allclose(got["history_valid_ndcg@10"], want["history_valid_ndcg@10"], rtol=0, atol=1e-12)
    assert (got["epochs"], got["best_epoch"]) == (want["epochs"], want["best_epoch"])
    for name in ("interest", "items"):
        g, w = got[name], want[name]
        assert g["shape"] == w["shape"], name
        assert g["first_id"] == w["first_id"], name
        np.testing.assert_allclose([g["sum"], g["sum_sq"]], [w["sum"], w["sum_sq"]], rtol=0, atol=1e-6,
                                   err_msg=f"{name} sum / sum of squares")
        np.testing.assert_allclose(g["head"], w["head"], rtol=0, atol=1e-6, err_msg=f"{name} first row")
        # The exact bits depend on the CPU's kernels (oneDNN / MKL pick different vector code paths on other
        # processors, which round differently), so sha256 equality is asserted only on request. On the machine
        # that recorded these numbers the bits are equal run to run, and the refactor must keep them equal there.
        if os.environ.get("MMREC_BIT_EXACT") == "1":
            assert g["sha256"] == w["sha256"], f"{name}: the stored vectors are no longer bit-identical"


def test_text_only_slice_matches_pinned_numbers(tmp_path, text_encoder):
    _check(run_slice(tmp_path, False, text_encoder), PINNED["text"])


def test_text_image_slice_matches_pinned_numbers(tmp_path, text_encoder, image_encoder):
    posters = require_shared(POSTERS)
    _check(run_slice(tmp_path, True, text_encoder, image_encoder, posters), PINNED["text+image"])
