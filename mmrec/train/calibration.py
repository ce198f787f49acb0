"""New-item calibration: after training, how items never seen in training are built and ranked is chosen on
validation (the model's :class:`~mmrec.networks.model.NewItemPolicy`), for an exposure target or for NDCG@10.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch

from ..features import ItemFeatures
from ..networks.model import ModelConfig, MultimodalRecommender, NewItemPolicy
from .data import TrainingData
from .evaluate import evaluate_model, new_item_recall_ratio

__all__ = ["NewItemContent", "calibrate_new_item_bias", "calibrate_new_item_slots", "new_item_lift_scales"]


# Factors of the grid's largest multiple tried for an exposure target. Fine steps first: on the cold protocol the
# warm users' recall falls steeply past the grid (seed 0: 1.25x kept 0.13 Recall@20 where 1.5x kept 0.10).
_BEYOND_GRID = (1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0)
# Halvings of the step that first reached an exposure target (an eighth of it is left). On the cold protocol one
# grid step past the target cost warm users a fifth of their Recall@20 (seed 0: 1.0 std fell short, 1.25 std gave
# cold users 1.46x the warm users' recall on test).
_REFINE_STEPS = 3


class _Lift(NamedTuple):
    multiple: float
    bias: float
    logit_bias: float
    metrics: dict[str, float]
    ratio: float


@torch.no_grad()
def calibrate_new_item_bias(
    model: MultimodalRecommender, data: TrainingData, grid: tuple[float, ...], batch_size: int = 256,
    min_recall_ratio: float = 0.0, neighbours: int = 0,
) -> tuple[float, dict[str, float]]:
    """Choose how far items not seen in training are lifted, and from which content they are built, on validation.

    A multiple ``m`` of ``grid`` adds ``m`` standard deviations of the validation retrieval scores to new items'
    retrieval scores (the policy's ``bias``) and ``m`` standard deviations of the re-ranker's logits on those
    candidates to their logits (its ``logit_bias``). Neither stage ever ranked a new item against
    trained ones during training, so without a lift they sit too low to be recommended at all.

    The chosen multiple has the best NDCG@10 (ties keep the smaller lift) or, with ``min_recall_ratio > 0``, is the
    smallest whose :func:`new_item_recall_ratio` reaches ``min_recall_ratio``, searching on past the grid's largest
    multiple up to 8 times it (the highest ratio when none does), then halving the step that first reached it three
    times: the smallest multiple tried that reaches it, at most an eighth of that step above the one needed.

    This is tried for each way of building new items (:func:`_new_item_content_options`: all their content; for a
    model reading text and images, their text alone (``text_only``); with ``neighbours`` > 0, the vectors of that
    many trained items with the nearest texts (``neighbours``), keeping the best:
    the higher NDCG@10 or, with ``min_recall_ratio > 0``, the higher NDCG@10 among those reaching the ratio (the
    higher ratio when none does); ties keep the earlier in that list.
    The chosen policy is left in ``model.new_items`` (slots none). Returns the chosen multiple and the validation
    metrics (``cold_`` ones included) it reached."""
    options = _new_item_content_options(model.config, data.features, neighbours)
    before = model.new_items
    found = {}
    try:
        for option in options:
            model.new_items = option.policy()
            found[option] = _calibrate_lift(model, data, grid, batch_size, min_recall_ratio)
    except BaseException:
        model.new_items = before
        raise
    if min_recall_ratio > 0:
        reached = [o for o in options if found[o].ratio >= min_recall_ratio]
        chosen = max(reached or options, key=lambda o: (found[o].metrics["ndcg@10"] if reached else found[o].ratio,
                                                         -options.index(o)))
    else:
        chosen = max(options, key=lambda o: (found[o].metrics["ndcg@10"], -options.index(o)))
    lift = found[chosen]
    model.new_items = replace(chosen.policy(), bias=lift.bias, logit_bias=lift.logit_bias)
    return lift.multiple, lift.metrics


class NewItemContent(NamedTuple):
    """What a never-trained item's vector is built from (see :class:`~mmrec.networks.model.NewItemPolicy`)."""

    text_only: bool = False
    neighbours: int = 0

    def policy(self) -> NewItemPolicy:
        """A policy building new items this way, with no lift and no places."""
        return NewItemPolicy(text_only=self.text_only, neighbours=self.neighbours)


def _new_item_content_options(config: ModelConfig, features: ItemFeatures, neighbours: int = 0
                              ) -> list[NewItemContent]:
    """The ways of building new items worth trying, in order of preference on a tie: all their content; their
    text alone (differs only for a model reading both and new items having both); the vectors of their
    ``neighbours`` nearest trained items by text (for a model reading text, new items with a text and trained
    items to take from)."""
    options = [NewItemContent()]
    new = ~features.known
    if config.use_text and config.use_image and bool((new & features.present.all(1)).any()):
        options.append(NewItemContent(text_only=True))
    with_text = features.present[:, 0]
    if neighbours and config.use_text and bool((new & with_text).any()) and bool((features.known & with_text).any()):
        options.append(NewItemContent(neighbours=neighbours))
    return options


def _calibrate_lift(model: MultimodalRecommender, data: TrainingData, grid: tuple[float, ...], batch_size: int,
                    min_recall_ratio: float) -> _Lift:
    """The lift search of :func:`calibrate_new_item_bias` for the model's current way of building new items."""
    content = replace(model.new_items, bias=0.0, logit_bias=0.0)
    model.new_items = content
    unlifted = evaluate_model(model, data, "valid", batch_size)
    results = {0.0: unlifted}
    if not grid or bool(data.features.known.all()) or not unlifted.is_cold.any():
        return _Lift(0.0, 0.0, 0.0, {**unlifted.metrics, **unlifted.cold_metrics}, new_item_recall_ratio(unlifted))
    dot_scale, logit_scale = new_item_lift_scales(model, data)
    multiples = sorted(m for m in grid if m > 0)
    if min_recall_ratio > 0 and multiples:
        # an exposure target may need more lift than NDCG ever would: keep going past the grid
        multiples += [multiples[-1] * f for f in _BEYOND_GRID]
    ratios = {0.0: new_item_recall_ratio(unlifted)}

    def try_lift(multiple: float) -> bool:
        model.new_items = replace(content, bias=multiple * dot_scale, logit_bias=multiple * logit_scale)
        results[multiple] = evaluate_model(model, data, "valid", batch_size)
        ratios[multiple] = new_item_recall_ratio(results[multiple])
        return ratios[multiple] >= min_recall_ratio

    for multiple in multiples:
        if min_recall_ratio > 0 and ratios[max(ratios)] >= min_recall_ratio:
            break  # multiples ascend, so the last one tried is the smallest that reaches the target
        try_lift(multiple)
    if min_recall_ratio > 0:
        reached = [m for m in ratios if ratios[m] >= min_recall_ratio]
        if reached:
            # every step between grid multiples costs the other users recall: bisect the last step taken
            enough = min(reached)
            short = max((m for m in ratios if m < enough), default=enough)
            for _ in range(_REFINE_STEPS if short < enough else 0):
                middle = (short + enough) / 2
                short, enough = (short, middle) if try_lift(middle) else (middle, enough)
            chosen = enough
        else:
            chosen = max(ratios, key=ratios.get)
    else:
        chosen = max(results, key=lambda m: (results[m].metrics["ndcg@10"], -m))
    return _Lift(chosen, chosen * dot_scale, chosen * logit_scale,
                 {**results[chosen].metrics, **results[chosen].cold_metrics}, ratios[chosen])


@torch.no_grad()
def calibrate_new_item_slots(
    model: MultimodalRecommender, data: TrainingData, min_recall_ratio: float, batch_size: int = 256,
    neighbours: int = 0,
) -> tuple[int, dict[str, float]]:
    """Choose the new-item policy's ``slots`` on validation: the fewest places (up to half of ``new_item_slot_depth``)
    that give users whose target is a new item a :func:`new_item_recall_ratio` of ``min_recall_ratio``; when none
    does, the fewest with the highest ratio, or none if no number of places gives those users a single hit (a model
    that cannot tell new items apart, ID only, would fill them with arbitrary items). Lifts are set to 0: slots
    order new items by their own scores. Like :func:`calibrate_new_item_bias`, each way of building new items is
    tried (``neighbours``: how many trained items a new one may take its vector from) and the one needing fewer
    places is kept (then the higher NDCG@10, then the earlier way). The chosen policy is left in
    ``model.new_items``. Returns the places and the validation metrics (``cold_`` included) they reached; no new item
    among the validation targets means 0 places."""
    options = _new_item_content_options(model.config, data.features, neighbours)
    tried = range(1, model.config.new_item_slot_depth // 2 + 1) if len(data.split.cold_users("valid")) else (0,)
    before = model.new_items
    found = {}
    try:
        for option in options:
            results = {}
            for slots in tried:
                model.new_items = replace(option.policy(), slots=slots)
                results[slots] = evaluate_model(model, data, "valid", batch_size)
                if new_item_recall_ratio(results[slots]) >= min_recall_ratio:
                    break
            best = max(results, key=lambda n: (new_item_recall_ratio(results[n]), -n))
            if new_item_recall_ratio(results[best]) == 0 and best:
                best = 0
                model.new_items = option.policy()
                results[0] = evaluate_model(model, data, "valid", batch_size)
            found[option] = (best, results[best])
    except BaseException:
        model.new_items = before
        raise

    def preference(option: NewItemContent) -> tuple:
        slots, result = found[option]
        ratio = new_item_recall_ratio(result)
        return ratio >= min_recall_ratio, -slots if ratio >= min_recall_ratio else ratio, \
            result.metrics["ndcg@10"], -options.index(option)

    chosen = max(options, key=preference)
    slots, result = found[chosen]
    model.new_items = replace(chosen.policy(), slots=slots)
    return slots, {**result.metrics, **result.cold_metrics}


@torch.no_grad()
def new_item_lift_scales(model: MultimodalRecommender, data: TrainingData) -> tuple[float, float]:
    """The units of the new-item lift: the standard deviation of the retrieval scores of (up to 1,024) validation
    users over every item, and of the re-ranker's logits on their retrieval candidates."""
    device = next(model.parameters()).device
    vectors = model.item_vectors(data.features.to(device))
    rows = np.arange(min(data.split.n_users, 1024))
    context = data.behaviour.context("valid", rows, model.max_len).to(device)
    interest = model.interests(context, vectors, data.text_table.to(device))
    dot = interest @ vectors.T
    top = dot.topk(min(max(model.config.scorer.rerank, 1), dot.shape[1]), dim=1).indices
    return float(dot.std()), float(model.scorer.logits(interest, vectors[top]).std())
