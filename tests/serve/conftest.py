"""The serving tests' trained store: a model trained once on a real slice of MovieLens (text features), shared by
the API and the refresh tests, and helpers both read."""

import pytest
import torch

from mmrec import Recommender
from mmrec.train.config import TrainConfig
from mmrec.train.jobs import evaluate_store, train_store

from ..conftest import embed_text_only, write_movielens_slice


@pytest.fixture(scope="session")
def trained(tmp_path_factory, text_encoder):
    """The 800 most-rated movies and the interactions of users 1-150 on them (149 users rated one); 3 epochs. Tests
    add events to its store: compare against the training input or a fresh computation, never a fixed log."""
    folder = write_movielens_slice(tmp_path_factory.mktemp("api"), n_items=800, max_user=150)
    store_dir = folder / "store"
    embed_text_only(folder, store_dir, text_encoder)
    summary = train_store(store_dir, folder / "interactions.csv", folder / "tags.csv",
                          TrainConfig(epochs=3, show_progress=False), log=None, text_encoder=text_encoder)
    rec = Recommender.load(store_dir, device="cpu")
    rec.folder._text_encoder = text_encoder
    return folder, store_dir, rec, summary


@pytest.fixture(scope="session")
def evaluated(trained, text_encoder):
    """``evaluate_store`` of the trained store (valid and test), computed once for the tests that read it."""
    folder, store_dir, _, _ = trained
    return evaluate_store(store_dir, folder / "interactions.csv", folder / "tags.csv", text_encoder=text_encoder)


PROBE = ["260", "1210", "17", "2571", "318", "1196"]


def reference_top(rec, interest, exclude, k):
    """Top ``k`` item ids in the order evaluation measures (``MultimodalRecommender.rerank``) for ``interest``, with
    the items ``exclude`` masked out, computed without ``Recommender.recommend``."""
    with torch.no_grad():
        dot = rec.item_vectors @ interest + rec.model.new_items.bias * rec._new_items
        if exclude:
            dot[torch.tensor([rec.item_ids.index(i) for i in exclude])] = float("-inf")
        scores = rec.model.rerank(interest[None], rec.item_vectors, dot[None], rec._new_items.bool())[0]
    return [rec.item_ids[i] for i in scores.topk(k).indices.tolist()]


def history_of(log):
    """A stored event log ``[(timestamp, item_id, event, text)]`` as a ``score(history=...)`` argument."""
    return [(item, event, ts, text) for ts, item, event, text in log]
