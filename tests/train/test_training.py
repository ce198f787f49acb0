"""Training-side evaluation on a real MovieLens slice: ``evaluate_model`` ranks our model by the same rule
``mmrec.evaluation.evaluate`` applies to every model (the baselines included)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from mmrec import Store
from mmrec.embed import EmbedConfig, embed_catalog
from mmrec.networks.model import ModelConfig, NewItemPolicy
from mmrec.train import calibration, loop
from mmrec.train.config import TrainConfig
from mmrec.train.data import load_training_data
from mmrec.train.evaluate import evaluate_model
from mmrec.train.loop import fit
from mmrec.trained import TrainedModel

from ..conftest import embed_text_only, write_movielens_slice


@pytest.fixture(scope="module")
def folder(tmp_path_factory, text_encoder):
    folder = write_movielens_slice(tmp_path_factory.mktemp("training"), n_items=80, max_user=20)
    embed_text_only(folder, folder / "store", text_encoder)
    return folder


def test_a_target_the_user_consumed_before_is_ranked_not_masked(folder):
    # user 1 watches their first movie again as their last event: the test target is also in their history
    interactions = pd.read_csv(folder / "interactions.csv")
    first = interactions[interactions.user_id == 1].sort_values(["timestamp", "item_id"]).iloc[[0]]
    again = first.assign(timestamp=interactions.timestamp.max() + 1)
    data = load_training_data(Store(folder / "store"), pd.concat([interactions, again], ignore_index=True))
    user = list(data.split.user_ids).index("1")
    target = int(data.split.target("test")[user])
    assert data.item_ids[target] == str(first.item_id.iloc[0])
    history = data.split.history("test").row(user)[0]
    assert target in history.tolist()

    model = fit(data, TrainConfig(epochs=1, show_progress=False), log=None).model
    result = evaluate_model(model, data, "test")
    rank = result.per_user["rank"][list(result.users).index(user)]

    # independently: score with the rest of the history masked, rank the target among items outside the history
    context = data.behaviour.context("test", np.array([user]), model.max_len)
    exclude = torch.zeros(1, len(data.item_ids), dtype=torch.bool)
    exclude[0, history[history != target]] = True
    with torch.no_grad():
        scores = model.bind(data.features, data.text_table).scores(context, exclude)[0]
    candidates = np.setdiff1d(np.arange(len(data.item_ids)), history)
    assert torch.isfinite(scores[target])  # masking it as history used to score it -inf: always ranked last
    assert rank == 1 + int((scores[candidates] > scores[target]).sum())
    assert rank <= len(candidates)


def test_item_text_with_aggregated_tags_is_warned_about(folder, text_encoder, recwarn):
    # items.csv's `tags` column gathers tags written at any time; embedded by default, it leaks the test period
    load_training_data(Store(folder / "store"), folder / "interactions.csv")
    assert not [w for w in recwarn if "tags" in str(w.message)]
    with pytest.warns(UserWarning, match=r"text column\(s\) \['tags'\] become item text"):
        embed_catalog(folder / "items.csv", folder / "default-columns", EmbedConfig(use_images=False),
                      text_encoder=text_encoder)
    store = Store(folder / "default-columns")
    tagged = store.items_with_text_field("tags")
    assert 0 < tagged < len(store)  # only the items that have tags
    with pytest.warns(UserWarning, match=rf"item text of {tagged} items holds a 'tags' column.*--text-columns"):
        load_training_data(store, folder / "interactions.csv")


def test_training_only_on_modalities_the_store_lacks_is_refused(folder):
    from mmrec.report import QualityConfig, run_report

    store = Store(folder / "store")  # embedded text-only
    data = load_training_data(store, folder / "interactions.csv")
    image_only = TrainConfig(epochs=1, show_progress=False, model=ModelConfig(use_text=False, use_id=False))
    with pytest.raises(ValueError, match=r"reads only image, but the store holds no image features.*--images-root"):
        fit(data, image_only, log=None)
    # with another signal present, a missing modality is said and left out
    said = []
    fit(data, TrainConfig(epochs=1, show_progress=False), log=said.append)
    assert "the store holds no image features: training without them" in said
    # the report refuses such variants before training anything
    out = folder / "report"
    with pytest.raises(ValueError, match=r"models: image, text\+image read image features the store does not hold"
                                         r".*--models pop,text"):
        run_report(store, folder / "interactions.csv", out, QualityConfig(models=("pop", "image", "text+image", "text")))
    assert not out.exists()


def test_a_repeated_row_counts_once_as_in_the_event_log(folder, text_encoder):
    # the store's log keys an event by (user, timestamp, item, event[, text]); training must read the same events
    interactions, tags = pd.read_csv(folder / "interactions.csv"), pd.read_csv(folder / "tags.csv")
    store = Store(folder / "store")
    once = load_training_data(store, interactions, tags, text_encoder)
    with pytest.warns(UserWarning, match=r"3 rows repeat an earlier row's user, timestamp, item and event"):
        twice = load_training_data(store, pd.concat([interactions, interactions.iloc[:3]], ignore_index=True),
                                   pd.concat([tags, tags.iloc[:2]], ignore_index=True), text_encoder)
    for stage in ("valid", "test"):
        assert np.array_equal(once.split.target(stage), twice.split.target(stage))
    for name in ("offsets", "item", "timestamp", "event", "text"):
        assert np.array_equal(getattr(once.behaviour, name), getattr(twice.behaviour, name)), name
    assert twice.n_context_dropped == once.n_context_dropped + 2


ALL, TEXT, NEIGHBOURS = (False, 0), (True, 0), (False, 20)


@pytest.mark.parametrize(("target", "lifts", "chosen"), [
    # NDCG@10 decides; a tie keeps the earlier way (every modality before text alone before neighbours)
    (0.0, {ALL: (0.0, 0.060, 0.0), TEXT: (0.25, 0.062, 0.3), NEIGHBOURS: (0.0, 0.061, 0.2)}, TEXT),
    (0.0, {ALL: (0.0, 0.060, 0.0), TEXT: (0.0, 0.060, 0.1), NEIGHBOURS: (0.0, 0.060, 0.2)}, ALL),
    (0.0, {ALL: (0.0, 0.060, 0.0), TEXT: (0.0, 0.058, 0.1), NEIGHBOURS: (0.25, 0.063, 0.2)}, NEIGHBOURS),
    # an exposure target: the better NDCG@10 among the options that reach it...
    (0.5, {ALL: (1.25, 0.049, 0.55), TEXT: (1.0, 0.059, 0.52), NEIGHBOURS: (0.5, 0.058, 0.51)}, TEXT),
    (0.5, {ALL: (1.25, 0.049, 0.55), TEXT: (1.0, 0.059, 0.40), NEIGHBOURS: (8.0, 0.010, 0.45)}, ALL),
    # ...or the higher ratio when none does
    (0.5, {ALL: (8.0, 0.020, 0.30), TEXT: (8.0, 0.010, 0.45), NEIGHBOURS: (8.0, 0.010, 0.40)}, TEXT),
])
def test_new_items_are_built_the_way_that_validates_better(target, lifts, chosen, monkeypatch):
    tried = []

    def lift_for_current_vectors(model, data, grid, batch_size, min_recall_ratio):
        way = (model.new_items.text_only, model.new_items.neighbours)
        tried.append(way)
        multiple, ndcg, ratio = lifts[way]
        return calibration._Lift(multiple, 10 * multiple, 100 * multiple, {"ndcg@10": ndcg}, ratio)

    monkeypatch.setattr(calibration, "_calibrate_lift", lift_for_current_vectors)
    model = SimpleNamespace(config=ModelConfig(), new_items=NewItemPolicy())
    # a trained item with text and poster, a new one with both, a new one with text alone
    present = torch.tensor([[True, True], [True, True], [True, False]])

    def calibrate(known, neighbours=20, present=present):
        tried.clear()
        data = SimpleNamespace(features=SimpleNamespace(known=torch.tensor(known), present=present))
        return calibration.calibrate_new_item_bias(model, data, (0.0, 1.0), min_recall_ratio=target,
                                                   neighbours=neighbours)

    multiple, metrics = calibrate([True, False, False])
    assert tried == [ALL, TEXT, NEIGHBOURS]
    assert (model.new_items.text_only, model.new_items.neighbours) == chosen
    assert (multiple, metrics["ndcg@10"]) == lifts[chosen][:2]
    assert (model.new_items.bias, model.new_items.logit_bias) == (10 * multiple, 100 * multiple)
    assert model.new_items.slots == 0
    # text alone differs from all the content only where a new item has both and the model reads posters
    calibrate([True, True, False])
    assert tried == [ALL, NEIGHBOURS]
    # neighbours need a count, new items with a text and trained items with a text to take vectors from
    calibrate([True, True, False], neighbours=0)
    assert tried == [ALL] and (model.new_items.text_only, model.new_items.neighbours) == ALL
    calibrate([True, False, False], present=torch.tensor([[False, True], [True, True], [True, False]]))
    assert tried == [ALL, TEXT]
    model.config = replace(model.config, use_text=False)
    calibrate([True, False, False])
    assert tried == [ALL]
    model.config = replace(model.config, use_text=True, use_image=False)
    calibrate([True, False, False])
    assert tried == [ALL, NEIGHBOURS]


@pytest.mark.parametrize("slope, chosen, tried", [
    # the grid and its continuation fall short up to 1.5 and reach 0.5 at 1.75; halving that step three times
    # finds 1.6875 (0.506) above 1.65625 (0.497)
    (0.3, 1.6875, [0.5, 1.0, 1.25, 1.5, 1.75, 1.625, 1.6875, 1.65625]),
    # the grid's first multiple reaches it: the step from no lift is halved
    (2.0, 0.25, [0.5, 0.25, 0.125, 0.1875]),
])
def test_an_exposure_target_is_reached_with_the_smallest_lift_to_an_eighth_of_a_step(slope, chosen, tried,
                                                                                     monkeypatch):
    evaluated = []

    def evaluate_at_current_lift(model, data, stage, *args):
        multiple = model.new_items.bias / 10.0
        evaluated.append(multiple)
        # users whose target is a new item gain recall linearly with the lift; the others lose a little
        return SimpleNamespace(ratio=slope * multiple, metrics={"ndcg@10": 0.06 - 0.01 * multiple},
                               cold_metrics={}, is_cold=torch.tensor([True, False]))

    monkeypatch.setattr(calibration, "evaluate_model", evaluate_at_current_lift)
    monkeypatch.setattr(calibration, "new_item_recall_ratio", lambda result: result.ratio)
    monkeypatch.setattr(calibration, "new_item_lift_scales", lambda *args: (10.0, 100.0))
    data = SimpleNamespace(features=SimpleNamespace(known=torch.tensor([True, False])))
    model = SimpleNamespace(config=ModelConfig(), new_items=NewItemPolicy())
    lift = calibration._calibrate_lift(model, data, (0.0, 0.5, 1.0), 256, 0.5)
    assert evaluated == [0.0] + tried
    assert (lift.multiple, lift.bias, lift.logit_bias) == (chosen, 10 * chosen, 100 * chosen)
    assert lift.ratio >= 0.5 and all(slope * multiple < 0.5 for multiple in evaluated if multiple < chosen)


def test_an_interrupted_calibration_leaves_the_policy_as_it_was(monkeypatch):
    before = NewItemPolicy(bias=0.5, logit_bias=2.0)
    model = SimpleNamespace(config=ModelConfig(), new_items=before)

    def interrupted(model, *args):
        if model.new_items.neighbours:
            raise KeyboardInterrupt
        model.new_items = replace(model.new_items, bias=9.0)
        return calibration._Lift(1.0, 9.0, 9.0, {"ndcg@10": 0.1}, 0.0)

    monkeypatch.setattr(calibration, "_calibrate_lift", interrupted)
    features = SimpleNamespace(known=torch.tensor([True, False]), present=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(KeyboardInterrupt):
        calibration.calibrate_new_item_bias(model, SimpleNamespace(features=features), (1.0,), neighbours=20)
    assert model.new_items == before
    assert (model.new_items.text_only, model.new_items.neighbours, model.new_items.bias,
            model.new_items.logit_bias) == (False, 0, 0.5, 2.0)


def test_calibration_outputs_in_the_given_config_do_not_reach_training(folder, monkeypatch):
    # a fifth of the items never trained on, so a carried-over lift would move them in every validation ranking
    data = load_training_data(Store(folder / "store"), folder / "interactions.csv", hold_out=0.2, hold_out_seed=0)
    # a model config as saves from before the new-item policy was kept apart held it: the policy keys are dropped
    carried = ModelConfig.from_dict({**ModelConfig().to_dict(), "new_item_bias": 5.0, "new_item_logit_bias": 5.0,
                                     "new_item_text_only": True, "new_item_neighbours": 5})
    assert carried == ModelConfig()
    plain = fit(data, TrainConfig(epochs=1, show_progress=False, new_item_bias_grid=()), log=None)
    validated_with = []
    evaluate = evaluate_model

    def observed(model, *args, **kwargs):
        p = model.new_items
        validated_with.append((p.bias, p.logit_bias, p.text_only, p.neighbours))
        return evaluate(model, *args, **kwargs)

    # validation during training (the loop) and the new-item calibration after it
    monkeypatch.setattr(loop, "evaluate_model", observed)
    monkeypatch.setattr(calibration, "evaluate_model", observed)
    given = fit(data, TrainConfig(epochs=1, show_progress=False, new_item_bias_grid=(), new_item_neighbours=0,
                                  model=carried), log=None)
    assert validated_with and set(validated_with) == {(0.0, 0.0, False, 0)}
    assert given.history[0]["valid_ndcg@10"] == plain.history[0]["valid_ndcg@10"]


def test_a_cpu_training_repeats_bit_for_bit_on_several_threads(folder):
    """Two threads add an indexed table's gradients in timing order unless training asks for deterministic
    kernels; then the same seed gives the same weights, and the process-wide flag is off again afterwards."""
    data = load_training_data(Store(folder / "store"), folder / "interactions.csv")
    config = TrainConfig(epochs=3, show_progress=False, new_item_bias_grid=(), device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first, second = [fit(data, config, log=None).model.state_dict() for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("ratios, chosen", [
    ({1: 0.1, 2: 0.3, 3: 0.55}, 3),  # the fewest places reaching the target; more are not tried
    ({n: min(0.4, 0.1 * n) for n in range(1, 11)}, 4),  # none reaches it: the fewest with the highest ratio
    ({n: 0.0 for n in range(1, 11)}, 0),  # no hit at any number (new items all look alike): no places
])
def test_new_item_places_are_the_fewest_that_reach_the_target(ratios, chosen, monkeypatch):
    model = SimpleNamespace(config=ModelConfig(), new_items=NewItemPolicy(bias=1.0))
    evaluated = []

    def evaluate_with_current_places(model, data, stage, *args):
        evaluated.append(model.new_items.slots)
        ratio = ratios.get(model.new_items.slots, 0.0)
        return SimpleNamespace(ratio=ratio, metrics={"ndcg@10": 0.06}, cold_metrics={"cold_recall@20": ratio / 5})

    monkeypatch.setattr(calibration, "evaluate_model", evaluate_with_current_places)
    monkeypatch.setattr(calibration, "new_item_recall_ratio", lambda result: result.ratio)
    features = SimpleNamespace(known=torch.tensor([True, False]), present=torch.tensor([[True, False], [False, True]]))
    data = SimpleNamespace(features=features, split=SimpleNamespace(cold_users=lambda stage: [0]))
    slots, metrics = calibration.calibrate_new_item_slots(model, data, 0.5)
    assert slots == model.new_items.slots == chosen and model.new_items.bias == 0.0
    assert evaluated == sorted(ratios) + ([0] if chosen == 0 else [])
    assert metrics["cold_recall@20"] == ratios.get(chosen, 0.0) / 5


def test_training_gives_new_items_places_by_default_keeps_lifts_off_and_saves_the_places(folder, tmp_path):
    data = load_training_data(Store(folder / "store"), folder / "interactions.csv", hold_out=0.2, hold_out_seed=0)
    assert (TrainConfig().new_item_exposure, TrainConfig().new_item_recall_ratio) == ("slots", 0.5)
    fitted = fit(data, TrainConfig(epochs=1, show_progress=False), log=None)
    policy = fitted.model.new_items
    assert 1 <= policy.slots <= 10 and policy.bias == policy.logit_bias == 0.0
    TrainedModel(fitted.model, {}).save(tmp_path / "model")
    assert TrainedModel.load(tmp_path / "model").network.new_items.slots == policy.slots
    # no exposure target: no places, whatever the exposure says
    untargeted = fit(data, TrainConfig(epochs=1, show_progress=False, new_item_recall_ratio=0.0), log=None)
    assert untargeted.model.new_items.slots == 0
    with pytest.raises(ValueError, match="new_item_exposure"):
        TrainConfig(new_item_exposure="boost")
    with pytest.raises(ValueError, match="new_item_slot_depth must be >= 1"):
        ModelConfig(new_item_slot_depth=0)
