"""Content kNN (:class:`mmrec.baselines.ContentKNN`) on the serving tests' real slice and its MiniLM text features:
the items' own content makes its ranking, and new items are ranked by it like any other."""

import torch

from mmrec.baselines import build_baseline
from mmrec.beyond import content_vectors
from mmrec.data.behaviour import build_behaviour
from mmrec.data.split import hold_out_items
from mmrec.evaluation import evaluate
from mmrec.store import Store
from mmrec.train.data import load_training_data


def test_content_knn_ranks_by_the_items_own_text(trained):
    folder, store_dir, _, _ = trained
    with Store(store_dir, create=False) as store:
        data = load_training_data(store, folder / "interactions.csv")
    content = content_vectors(data.features)
    shuffled = content[torch.randperm(len(content), generator=torch.Generator().manual_seed(0))]
    ndcg = {}
    for name, vectors in (("text", content), ("shuffled", shuffled)):
        knn = build_baseline("content-knn", data.split, vectors)
        knn.prepare(data.split)
        ndcg[name] = evaluate(knn, build_behaviour(data.split), "test").metrics["ndcg@10"]
    assert ndcg["text"] > 1.5 * ndcg["shuffled"], ndcg

    # cold protocol: a fifth of the items never trained on; content kNN ranks them among new items by text alone
    split, _ = hold_out_items(data.split, 0.2, 0)
    knn = build_baseline("content-knn", split, content)
    result = evaluate(knn, build_behaviour(split), "test")
    assert result.n_cold_users > 0 and result.cold_metrics["cold_new_recall@20"] > 0
