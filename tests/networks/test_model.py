"""The recommender's training objective (which parts of the network each loss trains) and its saved files."""

import json
import os
import pathlib
from dataclasses import replace

import pytest
import torch

from mmrec.data import SequenceBatch
from mmrec.features import ItemFeatures
from mmrec.fusion import FusionConfig
from mmrec.networks.model import ModelConfig, MultimodalRecommender, NewItemPolicy
from mmrec.networks.scorer import ScorerConfig
from mmrec.trained import ModelLoadError, TrainedModel


def _features(n: int = 40) -> ItemFeatures:
    g = torch.Generator().manual_seed(0)
    present = torch.ones(n, 2, dtype=torch.bool)
    present[:5, 1] = False  # a few items without an image
    known = torch.ones(n, dtype=torch.bool)
    known[-4:] = False  # never seen in training
    return ItemFeatures(torch.randn(n, 384, generator=g), torch.rand(n, 1280, generator=g), present,
                        torch.arange(n), known)


def test_cold_loss_trains_the_content_path_towards_full_vectors_and_leaves_ids_alone():
    features = _features()
    model = MultimodalRecommender(ModelConfig(fusion=FusionConfig(n_items=len(features)), cold_batch=16))
    model.train()
    full = model.item_vectors(features)
    loss = model._cold_loss(features, full)
    loss.backward()
    assert loss.item() > 0
    assert model.fusion.id_embedding.weight.grad is None or not model.fusion.id_embedding.weight.grad.any()
    assert model.fusion.text_adapter.proj.weight.grad.abs().sum() > 0
    # more steps on that loss alone bring content-only vectors closer to the (fixed) full ones
    model.eval()
    with torch.no_grad():
        target = model.item_vectors(features)
    optimizer = torch.optim.Adam([p for n, p in model.named_parameters() if "id_embedding" not in n], lr=1e-3)
    before = model._cold_loss(features, target).item()
    for _ in range(30):
        optimizer.zero_grad()
        model._cold_loss(features, target).backward()
        optimizer.step()
    assert model._cold_loss(features, target).item() < 0.5 * before


def test_cold_loss_runs_only_when_the_model_has_both_ids_and_content():
    features = _features()
    for use_text, use_id, expected in ((True, True, True), (True, False, False), (False, True, False)):
        config = ModelConfig(use_text=use_text, use_image=use_text, use_id=use_id)
        config = replace(config, fusion=replace(config.fusion, n_items=len(features) if use_id else 0))
        parts = _loss_parts(MultimodalRecommender(config), features)
        assert ("cold" in parts) == expected and parts["next_item"] > 0


def _context(n_items: int, targets: torch.Tensor | None = None) -> SequenceBatch:
    """One user who saw items 0, 1, 2."""
    return SequenceBatch(items=torch.tensor([[0, 1, 2]]), events=torch.zeros(1, 3, dtype=torch.long),
                         gaps=torch.zeros(1, 3, dtype=torch.long), texts=torch.full((1, 3), -1),
                         lengths=torch.tensor([3]), users=torch.tensor([0]), n_items=n_items, targets=targets)


def _loss_parts(model, features):
    n = len(features)
    model.bind(features)
    loss = model.loss(_context(n, targets=torch.tensor([[1, 2, 3, n]])))
    assert torch.isfinite(loss)
    return model.loss_parts


def test_weight_average_is_a_bias_corrected_ema_of_the_weights():
    from mmrec.train.loop import WeightAverage

    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.9)
    expected, weight_sum = torch.zeros_like(model.weight), 0.0
    for step in range(1, 6):
        with torch.no_grad():
            model.weight.fill_(float(step))
        average.update(model)
        expected = 0.9 * expected + 0.1 * model.weight.detach()
        weight_sum = 0.9 * weight_sum + 0.1
    average.materialise()
    torch.testing.assert_close(average.model.weight, expected / weight_sum)
    # after one step the average is that step's weights, not a blend with zeros or the initial weights
    single = WeightAverage(model, decay=0.99)
    single.update(model)
    single.materialise()
    torch.testing.assert_close(single.model.weight, model.weight)


def test_new_item_bias_lifts_only_items_never_seen_in_training():
    torch.manual_seed(0)
    features = _features()
    model = MultimodalRecommender(ModelConfig(fusion=FusionConfig(n_items=len(features)),
                                              scorer=ScorerConfig(rerank=0)))
    model.eval().bind(features)
    batch = _context(len(features))
    new = ~features.known
    plain = model.scores(batch)
    model.new_items = NewItemPolicy(bias=2.5)
    lifted = model.scores(batch)
    assert torch.allclose(lifted[:, new], plain[:, new] + 2.5)
    assert torch.equal(lifted[:, ~new], plain[:, ~new])


def test_excluded_items_stay_excluded_when_the_re_ranker_sees_the_whole_catalogue():
    torch.manual_seed(0)
    features = _features()  # 40 items, fewer than the 100 the MLP re-ranks: masked items are among its top k
    model = MultimodalRecommender(ModelConfig(fusion=FusionConfig(n_items=len(features)))).eval()
    assert model.config.scorer.rerank >= len(features)
    batch = _context(len(features))
    exclude = torch.zeros(1, len(features), dtype=torch.bool)
    exclude[0, [0, 1, 2, 17]] = True
    with torch.no_grad():
        scores = model.bind(features).scores(batch, exclude)
    assert torch.equal(torch.isinf(scores), exclude) and (scores[exclude] < 0).all()


def test_new_items_built_from_text_alone_ignore_only_their_own_posters():
    features = _features()
    features.present[-1] = torch.tensor([False, True])  # a new item with a poster and no text keeps its poster
    model = MultimodalRecommender(ModelConfig(fusion=FusionConfig(n_items=len(features)))).eval()
    with torch.no_grad():
        every_signal = model.item_vectors(features)
        model.new_items = NewItemPolicy(text_only=True)
        text_first = model.item_vectors(features)
        no_posters = features.present.clone()
        no_posters[:, 1] = False
        text_alone = model.item_vectors(ItemFeatures(features.text, features.image, no_posters, features.id_index,
                                                     features.known))
    new_with_text = torch.tensor([False] * 36 + [True, True, True, False])
    assert torch.allclose(text_first[new_with_text], text_alone[new_with_text])
    assert not torch.allclose(every_signal[new_with_text], text_first[new_with_text])
    assert torch.equal(text_first[~new_with_text], every_signal[~new_with_text])
    model.train()  # the content-only vectors training regresses onto full ones keep their posters
    torch.manual_seed(0)
    trained_view = model.item_vectors(features)
    model.new_items = NewItemPolicy(text_only=False)
    torch.manual_seed(0)
    assert torch.equal(trained_view, model.item_vectors(features))


def test_new_items_with_a_text_take_the_vectors_of_the_trained_items_with_the_nearest_texts(monkeypatch):
    from mmrec.networks import model as model_module

    features = _features()
    features.text[-4] = features.text[3] + 0.01 * torch.randn(384)  # a new item written like trained item 3
    features.present[-1] = torch.tensor([False, True])  # a new item without text keeps its own (poster) vector
    model = MultimodalRecommender(ModelConfig(fusion=FusionConfig(n_items=len(features))), NewItemPolicy(neighbours=1))
    model.eval()
    monkeypatch.setattr(model_module, "_SIMILARITY_BLOCK", 40)  # one new item per block: blocks join up right
    with torch.no_grad():
        vectors = model.item_vectors(features)
        model.new_items = NewItemPolicy(neighbours=0)
        content = model.item_vectors(features)
    trained = features.known
    assert torch.equal(vectors[trained], content[trained]) and torch.equal(vectors[-1], content[-1])
    assert torch.allclose(torch.nn.functional.normalize(vectors[-4], dim=0),
                          torch.nn.functional.normalize(content[3], dim=0), atol=1e-6)
    assert torch.allclose(vectors[-4:-1].norm(dim=1), content[trained].norm(dim=1).mean().expand(3))
    # several neighbours: a softmax-weighted mean; the default temperature all but ignores unrelated texts
    model.new_items = NewItemPolicy(neighbours=5)
    with torch.no_grad():
        sharp = model.item_vectors(features)
        model.config = replace(model.config, new_item_neighbour_temperature=10.0)
        flat = model.item_vectors(features)
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(sharp[-4], content[3], dim=0) > 0.999 > 0.9 > cosine(flat[-4], content[3], dim=0)
    model.train()  # training's content-only vectors (the cold loss) never borrow
    torch.manual_seed(0)
    borrowed = model.item_vectors(features)
    model.new_items = NewItemPolicy(neighbours=0)
    torch.manual_seed(0)
    assert torch.equal(borrowed, model.item_vectors(features))
    with pytest.raises(ValueError, match="neighbours"):
        NewItemPolicy(neighbours=-1)
    with pytest.raises(ValueError, match="new_item_neighbour_temperature"):
        ModelConfig(new_item_neighbour_temperature=0.0)


def _small(n_items: int) -> MultimodalRecommender:
    return MultimodalRecommender(ModelConfig(fusion=FusionConfig(n_items=n_items)))


def test_save_load_round_trip_is_exact(tmp_path):
    model = _small(40).eval()
    TrainedModel(model, {"item_ids": ["1", "2"]}).save(tmp_path)
    trained = TrainedModel.load(tmp_path)
    loaded, meta = trained.network, trained.meta
    assert meta["item_ids"] == ["1", "2"]
    features = _features()
    with torch.no_grad():
        assert torch.equal(model.item_vectors(features), loaded.item_vectors(features))


def test_save_puts_each_file_on_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    TrainedModel(_small(40), {}).save(tmp_path)  # the model a crash must not lose
    steps = []
    fsync, replace = os.fsync, pathlib.Path.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (steps.append(("fsync", os.fstat(fd).st_ino)), fsync(fd))[1])
    monkeypatch.setattr(pathlib.Path, "replace",
                        lambda self, target: (steps.append(("replace", self.stat().st_ino)), replace(self, target))[1])
    TrainedModel(_small(65), {}).save(tmp_path)
    renamed = [ino for step, ino in steps if step == "replace"]
    assert len(renamed) == 3  # weights, config, then the manifest of both
    for ino in renamed:
        assert steps.index(("fsync", ino)) < steps.index(("replace", ino))
    if os.name == "posix":
        assert steps[-1] == ("fsync", tmp_path.stat().st_ino)  # the renames are durable too
    assert TrainedModel.load(tmp_path).network.config.fusion.n_items == 65


def test_weights_from_another_save_are_refused_not_half_loaded(tmp_path):
    # what a crash between the two renames leaves: the new model's weights beside the old model's config
    TrainedModel(_small(40), {}).save(tmp_path / "old")
    TrainedModel(_small(65), {}).save(tmp_path / "new")
    (tmp_path / "new" / "model.safetensors").replace(tmp_path / "old" / "model.safetensors")
    with pytest.raises(ModelLoadError, match="does not belong to"):
        TrainedModel.load(tmp_path / "old")


def test_unreadable_files_are_model_load_errors(tmp_path):
    TrainedModel(_small(40), {}).save(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="does not belong to"):
        TrainedModel.load(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    del meta["weights_sha256"]  # as saved before the hash existed: the file itself must still be checked
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="does not fit"):
        TrainedModel.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="is not a model config"):
        TrainedModel.load(tmp_path)
