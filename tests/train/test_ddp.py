"""``torchrun --nproc-per-node 2 -m mmrec train``: a real 2-process gloo run on a MovieLens slice, against one
process on the same slice and seed; how the processes share each batch; the errors of a wrong launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmrec import Recommender, Store, TrainConfig, train_store
from mmrec.train.distributed import Ranks, process_group, share

from ..conftest import copy_store, embed_text_only, write_movielens_slice

# 185 users and 398 training windows. Batches of 32 (13 steps per epoch) at 3x the default learning rate: with the
# default 128 (4 steps) a 400-movie slice was still at chance NDCG after 2 epochs, where a run whose processes
# trained nothing together would be too.
N_ITEMS, MAX_USER, EPOCHS, BATCH, LEARNING_RATE = 200, 200, 2, 32, 3e-3
# Seed noise, measured on this slice and these settings (CPU, seeds 0-5): validation NDCG@10 after epoch 2 was
# 0.033-0.075 in one process (std 0.016) and 0.043-0.075 in two (std 0.012); the same seed in one and in two
# processes differed by 0.014-0.030 (0.021 for seed 0, the seed used here). Two independent runs differ with a
# std of about sqrt(2) * 0.014 = 0.02: the tolerance is 2.5 times that.
NDCG_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def folder(tmp_path_factory, text_encoder):
    folder = write_movielens_slice(tmp_path_factory.mktemp("ddp"), n_items=N_ITEMS, max_user=MAX_USER)
    embed_text_only(folder, folder / "store", text_encoder)
    return folder


def _without_torchrun_env() -> dict[str, str]:
    names = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    return {k: v for k, v in os.environ.items() if k not in names}


def _history(store_dir) -> list[dict]:
    return json.loads((store_dir / "model" / "config.json").read_text())["train"]["history"]


def test_two_processes_train_one_model_that_validates_like_one_process(folder, tmp_path):
    one, two = copy_store(folder / "store", tmp_path / "one"), copy_store(folder / "store", tmp_path / "two")
    args = ["--interactions", str(folder / "interactions.csv"), "--context-events", str(folder / "tags.csv"),
            "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--learning-rate", str(LEARNING_RATE),
            "--patience", str(EPOCHS), "--seed", "0", "--device", "cpu", "--json"]
    # --standalone: a rendezvous on a free local port, so parallel test runs do not collide
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "mmrec", "train", "--store", str(two), *args],
                         capture_output=True, text=True, timeout=600, env=_without_torchrun_env())
    assert run.returncode == 0, run.stderr[-4000:]
    assert "2 processes on cpu: each trains on 16 windows of every batch of 32" in run.stdout
    # rank 0 alone reports and writes: one summary, one model installed (a second writer makes generation 2)
    summaries = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and run.stdout.count("saved model") == 1
    assert Store(two).current_model() == (1, summaries[0]["model_id"])
    rec = Recommender.load(two, device="cpu")
    assert rec.model_id == summaries[0]["model_id"]
    assert len(rec.recommend(next(iter(Store(two).get_users())), k=5)) == 5

    train_store(one, folder / "interactions.csv", folder / "tags.csv", TrainConfig(
        epochs=EPOCHS, batch_size=BATCH, learning_rate=LEARNING_RATE, patience=EPOCHS, seed=0, device="cpu",
        show_progress=False), log=None)
    alone, together = _history(one), _history(two)
    assert [row["epoch"] for row in together] == [row["epoch"] for row in alone] == list(range(1, EPOCHS + 1))
    assert abs(together[-1]["valid_ndcg@10"] - alone[-1]["valid_ndcg@10"]) <= NDCG_TOLERANCE, (alone, together)


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [32, 31])
def test_the_processes_batches_together_are_one_processs_batches(world_size, batch_size):
    order = np.random.default_rng(0).permutation(101)
    shares = [share(order, batch_size, Ranks(rank, world_size, torch.device("cpu"))) for rank in range(world_size)]
    per_process = shares[0][1]
    assert per_process == -(-batch_size // world_size)
    assert len({len(windows) for windows, _ in shares}) == 1  # as many steps in every process
    # one process's order, padded with its first windows to a multiple of the processes
    padded = np.concatenate([order, order[: -len(order) % world_size]])
    step = per_process * world_size  # the effective batch
    for k, start in enumerate(range(0, len(shares[0][0]), per_process)):
        together = np.concatenate([windows[start : start + per_process] for windows, _ in shares])
        assert sorted(together) == sorted(padded[k * step : (k + 1) * step])
    windows, size = share(order, batch_size, None)
    assert windows is order and size == batch_size


def test_torchrun_on_cuda_needs_a_gpu_for_every_process(monkeypatch):
    # checked before any process group starts, so no second process is needed to see it
    too_many = max(2, torch.cuda.device_count() + 1)
    for name, value in {"WORLD_SIZE": too_many, "LOCAL_WORLD_SIZE": too_many, "RANK": 0, "LOCAL_RANK": 0,
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": 29500}.items():
        monkeypatch.setenv(name, str(value))
    with pytest.raises(ValueError, match=rf"started {too_many} processes.*needs its own.*--device cpu"):
        with process_group("cuda"):
            pass
    with pytest.raises(ValueError, match="each process trains on the GPU of its local rank"):
        with process_group("cuda:0"):
            pass


def test_a_world_size_without_torchrun_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="torchrun --nproc-per-node N -m mmrec train"):
        with process_group("cpu"):
            pass


def test_python_m_mmrec_is_the_command():
    run = subprocess.run([sys.executable, "-m", "mmrec", "--help"], capture_output=True, text=True,
                         env=_without_torchrun_env())
    assert run.returncode == 0 and "train" in run.stdout


def test_only_train_runs_under_torchrun(tmp_path):
    run = subprocess.run([sys.executable, "-m", "mmrec", "evaluate", "--store", str(tmp_path)],
                         capture_output=True, text=True, env={**_without_torchrun_env(), "WORLD_SIZE": "2"})
    assert run.returncode == 2 and "only `mmrec train` runs under torchrun" in run.stderr
