"""Baselines on the real ml-latest-small split: popularity against the reference, short sequential fits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmrec.baselines import BPR, ContentKNN, GRU4Rec, PairData, Popularity, SASRec, build_baseline
from mmrec.data.batch import SequenceBatch
from mmrec.data import ItemIndex, build_behaviour, leave_one_out, load_interactions
from mmrec.evaluation import evaluate
from mmrec.train.baselines import BaselineTrainConfig, fit_baseline
from mmrec.train.loop import seed_everything

from ..conftest import SHARED

DATA = SHARED / "data" / "ml-latest-small"

REFERENCE = SHARED / "baselines" / "ml-latest-small.md"  # RecBole 1.2.1's numbers on the same split (610 users)

# One thread: on a shared 2-core machine a second OpenMP thread that waits for a busy core makes these small
# fits several times slower; results do not depend on the thread count.
QUICK = dict(seed=0, progress=False, num_threads=1)


@pytest.fixture(scope="module")
def split():
    if not (DATA / "interactions.csv").is_file():
        pytest.skip(f"the shared ml-latest-small data is not at {DATA} (it lives beside the repository)")
    items = ItemIndex.from_catalog(DATA / "items.csv")
    return leave_one_out(load_interactions(DATA / "interactions.csv", items))


@pytest.fixture(scope="module")
def reference_pop() -> dict[str, float]:
    """The Pop row of the reference table, read from the file (its numbers may be replaced by newer runs)."""
    if not REFERENCE.is_file():
        pytest.skip(f"the shared reference table is not at {REFERENCE} (it lives beside the repository)")
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in REFERENCE.read_text().splitlines() if line.lstrip().startswith("|")]
    header = next(r for r in rows if r[0].lower() == "model")
    pop = [r for r in rows if r[0].lower().startswith("pop")]
    assert len(pop) == 1, f"expected one Pop row in {REFERENCE}, found {pop}"
    columns = {name.lower(): name for name in ("Recall@10", "Recall@20", "NDCG@10", "NDCG@20", "MRR@10")}
    columns["valid ndcg@10"] = "valid NDCG@10"
    return {key: float(pop[0][header.index(name)]) for key, name in columns.items()}


def test_popularity_reproduces_reference(split, reference_pop):
    """Every metric of RecBole's Pop row, to the four digits the file prints.

    Never-rated catalogue items score 0, so ranking over all 9,742 items instead of RecBole's 9,724 rated ones
    changes no rank above them. Many items share a training count; a tied target counts each metric's expectation
    over its tie group's positions, which is what RecBole's numbers come to (taking the metric of the group's mean
    rank instead read NDCG@10 0.0178).
    """
    model = Popularity(split.n_items)
    result = fit_baseline(model, split, BaselineTrainConfig(**QUICK))
    test = evaluate(model, build_behaviour(split), "test")
    measured = {**test.metrics, "valid ndcg@10": result.best_valid.metrics["ndcg@10"]}
    assert {name: round(measured[name], 4) for name in reference_pop} == reference_pop
    assert result.best_epoch == 0 and result.epochs_run == 0
    # the most popular training item tops every user's list unless it is in their history
    top = int(np.argmax(np.bincount(split.train.item, minlength=split.n_items)))
    assert model.counts.argmax().item() == top


def test_bpr_negatives_avoid_training_items(split):
    data = PairData(split)
    users = split.train.row_of[:5000]
    negatives = data.sample_negatives(users, np.random.default_rng(0))
    assert not data._is_seen(users, negatives).any()
    assert data._is_seen(users, split.train.item[:5000]).all()


def test_bpr_loss_decreases(split):
    seed_everything(0)
    model = BPR(split.n_users, split.n_items)
    result = fit_baseline(model, split, BaselineTrainConfig(epochs=3, patience=3, **QUICK))
    losses = [h.loss for h in result.history]
    assert losses[0] > losses[1] > losses[2]


@pytest.mark.parametrize("name", ["gru4rec", "sasrec"])
def test_sequential_baselines_learn_on_a_slice(split, name):
    """Two epochs on the 300 users with the shortest histories (~10k targets, 357 windows): the training loss
    falls and fit_baseline() hands back the best epoch's weights."""
    part = split.select(np.sort(np.argsort(split.train.lengths, kind="stable")[:300]))
    seed_everything(0)
    model = build_baseline(name, part)
    result = fit_baseline(model, part, BaselineTrainConfig(epochs=2, patience=2, **QUICK))
    assert result.epochs_run == 2
    assert result.history[1].loss < result.history[0].loss < np.log(split.n_items)
    again = evaluate(model, build_behaviour(part), "valid")
    assert again.metrics["ndcg@10"] == pytest.approx(result.best_valid.metrics["ndcg@10"])
    assert again.metrics["ndcg@10"] == max(h.valid_ndcg10 for h in result.history)


@pytest.mark.parametrize("cls", [GRU4Rec, SASRec])
def test_sequential_models_are_causal_and_ignore_padding(split, cls):
    seed_everything(0)
    model = cls(split.n_items).eval()
    batch = build_behaviour(split).context("valid", np.arange(4), max_len=50).padded(50)
    with torch.no_grad():
        hidden = model.encode(batch)
        scores = model.scores(batch)
        # change everything after position 9 (items and padding): positions 0..9 must not move
        changed = batch.items.clone()
        changed[:, 10:] = torch.randint(0, split.n_items, changed[:, 10:].shape)
        batch.items = changed
        assert torch.allclose(model.encode(batch)[:, :10], hidden[:, :10], atol=1e-5)
    assert scores.shape == (4, split.n_items)
    last = hidden[torch.arange(4), batch.lengths - 1]
    assert torch.allclose(scores, last @ model.item_vectors().T, atol=1e-5)


def test_content_knn_profiles_weigh_recent_events_more():
    content = torch.eye(3)
    knn = ContentKNN(content, half_life=1.0, max_len=4)
    batch = SequenceBatch(items=torch.tensor([[0, 0, 1, 3]]), events=torch.zeros(1, 4, dtype=torch.long),
                          gaps=torch.zeros(1, 4, dtype=torch.long), texts=torch.full((1, 4), -1),
                          lengths=torch.tensor([3]), users=torch.tensor([0]), n_items=3)
    # weights 0.25, 0.5 (item 0) and 1 (item 1, the last): the profile leans to item 1, item 2 is orthogonal
    expected = torch.nn.functional.normalize(torch.tensor([[0.75, 1.0, 0.0]]), dim=1)
    torch.testing.assert_close(knn.scores(batch), expected)
    with pytest.raises(ValueError, match="content-knn ranks items by their content"):
        build_baseline("content-knn", None)

