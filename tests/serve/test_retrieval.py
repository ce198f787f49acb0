"""``recommend`` with exact and ANN retrieval on the trained store (mmrec.serve.retrieval): ANN answers what exact
answers, the index is saved beside the model, grows with new items without a rebuild, and is rebuilt when broken."""

import dataclasses
import logging
import shutil

import pytest
import torch

from mmrec import Recommender
from mmrec.embed import EmbedConfig, embed_catalog
from mmrec.serve import recommender
from mmrec.serve.index import ItemIndex
from mmrec.serve.retrieval import index_path, update_index

from .conftest import reference_top

USERS = [str(u) for u in range(1, 151)]


@pytest.fixture()
def store_copy(trained, tmp_path):
    _, store_dir, _, _ = trained
    copy = tmp_path / "store"
    shutil.copytree(store_dir, copy, ignore=shutil.ignore_patterns("index"))
    return copy


def _with_new_items(store, text_encoder, rows: str) -> None:
    catalogue = store.parent / "new.csv"
    catalogue.write_text("item_id,title,genres\n" + rows)
    embed_catalog(catalogue, store, EmbedConfig(use_images=False, text_columns=["title", "genres"]),
                  text_encoder=text_encoder)


def _lift_new_items(*recs, bias=0.5, logit_bias=0.0, slots=4):
    """Give the models a new-item policy that ranks new items (a trained one may choose none)."""
    for rec in recs:
        rec.model.new_items = dataclasses.replace(rec.model.new_items, bias=bias, logit_bias=logit_bias, slots=slots)


def test_exact_retrieval_keeps_the_order_evaluation_measures(trained):
    _, store_dir, rec, _ = trained
    exact = Recommender.load(store_dir, device="cpu", retrieval="exact")
    assert exact.retrieval == "exact" and Recommender.load(store_dir, device="cpu").retrieval == "exact"  # < 15k
    for user in USERS[:40]:
        seen = exact.store.seen_items(user, exact.interaction_events)
        want = reference_top(exact, exact.users.interests([user])[0], seen & exact.items.row.keys(), 10)
        assert [i for i, _ in exact.recommend(user, k=10)] == want


def test_ann_retrieval_answers_what_exact_answers(store_copy, text_encoder):
    _with_new_items(store_copy, text_encoder,
                    "sku-1,A new space adventure,Sci-Fi|Adventure\nsku-2,A quiet family drama,Drama\n"
                    "sku-3,Cartoon animals sing,Animation|Children\n")
    exact = Recommender.load(store_copy, device="cpu", retrieval="exact")
    ann = Recommender.load(store_copy, device="cpu", retrieval="ann")
    assert ann.retrieval == "ann" and index_path(store_copy, ann.model_id).is_file()
    _lift_new_items(exact, ann)
    hits = 0
    for user in USERS:
        want, got = exact.recommend(user, k=10), ann.recommend(user, k=10)
        hits += len({i for i, _ in want} & {i for i, _ in got})
        seen = ann.store.seen_items(user, ann.interaction_events)
        assert len(got) == 10 and not seen & {i for i, _ in got}
        new = [i for i, _ in got if i.startswith("sku-")]
        assert new == [i for i, _ in want if i.startswith("sku-")] and len(new) == 2  # 4 slots of 20 places: 2 of 10
        for item, probability in got:  # probabilities are the scorer's, as exact gives them
            assert probability == pytest.approx(dict(want).get(item, probability), abs=1e-5)
    assert hits / (10 * len(USERS)) >= 0.95
    batched = ann.recommend_many(USERS[:5], k=10)
    assert batched == [ann.recommend(u, k=10) for u in USERS[:5]]


def test_the_index_grows_with_new_items_without_a_rebuild(store_copy, text_encoder, caplog):
    first = Recommender.load(store_copy, device="cpu", retrieval="ann")
    path = index_path(store_copy, first.model_id)
    before = ItemIndex.load(path).extra["item_ids"]
    assert before == first.item_ids
    # an id that sorts among the catalogue's: a rebuild would put it in place, an addition appends it
    new = next(str(i) for i in range(1, 10**6) if str(i) not in first.items.row)
    _with_new_items(store_copy, text_encoder, f"{new},A brand-new documentary about cities,Documentary\n")
    with caplog.at_level(logging.INFO, logger="mmrec.serve.retrieval"):
        second = Recommender.load(store_copy, device="cpu", retrieval="ann")
    assert not [r for r in caplog.records if "rebuild" in r.getMessage()]
    after = ItemIndex.load(path).extra["item_ids"]
    assert after == before + [new] and second.item_ids.index(new) < len(before)
    # lifted so far that it outranks every trained item: found through the index
    _lift_new_items(second, bias=100.0, logit_bias=100.0, slots=0)
    assert second.recommend("1", k=3)[0][0] == new


def test_a_broken_or_stale_index_is_rebuilt(store_copy, caplog):
    rec = Recommender.load(store_copy, device="cpu", retrieval="ann")
    path = index_path(store_copy, rec.model_id)
    want = rec.recommend("1", k=10)
    path.write_bytes(path.read_bytes()[:1000])  # truncated, as by a full disk
    with caplog.at_level(logging.WARNING, logger="mmrec.serve.retrieval"):
        again = Recommender.load(store_copy, device="cpu", retrieval="ann")
    assert any("rebuilding" in r.getMessage() for r in caplog.records)
    assert again.recommend("1", k=10) == want and len(ItemIndex.load(path)) == len(rec.item_ids)
    # an index whose rows no longer hold the items' vectors (items re-embedded, a file from elsewhere) is rebuilt
    stale = ItemIndex.build(torch.randn(len(rec.item_ids), rec.item_vectors.shape[1] + 1).numpy())
    stale.save(path, {"item_ids": rec.item_ids})
    assert Recommender.load(store_copy, device="cpu", retrieval="ann").recommend("1", k=10) == want


def test_retrieval_is_validated_before_any_work(store_copy):
    with pytest.raises(ValueError, match="retrieval"):
        Recommender.load(store_copy, device="cpu", retrieval="fast")
    assert not (store_copy / "index").exists()


def test_train_and_embed_keep_the_index_up_to_date(store_copy, text_encoder):
    assert update_index(store_copy) is None  # 800 items: below the crossover, auto retrieval is exact
    path = update_index(store_copy, build=True)
    ids = ItemIndex.load(path).extra["item_ids"]
    (path.parent / "an-older-model.faiss").write_bytes(b"superseded")
    _with_new_items(store_copy, text_encoder, "sku-9,A new musical,Musical\n")
    assert update_index(store_copy) == path  # an existing index is updated...
    assert ItemIndex.load(path).extra["item_ids"] == ids + ["sku-9"]  # ...by adding the new item
    assert [p.name for p in path.parent.iterdir()] == [path.name]


# (a lift of 100 would add ties of its own: logits + an offset of ~100 lose their last digits in float32)
@pytest.mark.parametrize("bias, slots", [(0.0, 0), (0.5, 4), (5.0, 4), (-5.0, 4)])
def test_one_users_ranking_over_candidates_is_the_whole_catalogues(store_copy, text_encoder, monkeypatch, bias,
                                                                    slots):
    """A single request ranks only the items its top k can come from (or the whole catalogue where that would not
    be exact): the same lists as ranking every item, with new items lifted, pushed down or given places."""
    words = ["space", "love", "war", "robot", "ocean", "ghost", "city", "horse", "music", "crime"]
    genres = ["Drama", "Comedy", "Horror", "Sci-Fi", "Western", "Musical"]
    _with_new_items(store_copy, text_encoder, "".join(
        f"sku-{i},The {words[i % 10]} of the {words[(3 * i + 1) % 10]},{genres[i % 6]}\n" for i in range(30)))
    rec = Recommender.load(store_copy, device="cpu", retrieval="exact")
    _lift_new_items(rec, bias=bias, slots=slots)
    cases = [(u, k, exclude) for u in USERS[::5] for k in (1, 10, 150) for exclude in (True, False)]
    fast = [rec.recommend(u, k=k, exclude_seen=exclude) for u, k, exclude in cases]
    monkeypatch.setattr(recommender, "exact_candidates", lambda *args: None)  # rank every item, as before
    assert fast == [rec.recommend(u, k=k, exclude_seen=exclude) for u, k, exclude in cases]
    # a batch ranks every item in one pass: the same lists, up to the rounding of a batched matrix product
    assert [[i for i, _ in r] for r in rec.recommend_many(USERS[:5], k=10)] == \
        [[i for i, _ in rec.recommend(u, k=10)] for u in USERS[:5]]
