"""End-to-end training of fusion + GRU + scorer on stored encoder features (encoders frozen).

Objective: next-item cross-entropy over every item seen in training (full softmax, no sampled negatives), the
re-ranker's loss, the fusion's contrastive alignment and the cold-item loss (see :class:`~mmrec.model.ModelConfig`).
Early stopping on validation NDCG@10 of an average of the weights, under the README's evaluation protocol; seeded and
reproducible on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Iterator, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .behaviour import Behaviour, ContextEvents, build_behaviour
from .data import (
    ItemIndex,
    Split,
    _ids_or_empty,
    _readable_timestamps,
    hold_out_items,
    leave_one_out,
    load_interactions,
    read_table,
)
from .encoders.preprocess import clean_behaviour_texts
from .evaluation import EvalResult, evaluate
from .model import ItemFeatures, ModelConfig, MultimodalRecommender
from .store import Store

__all__ = ["TrainConfig", "TrainingData", "FitResult", "WeightAverage", "load_training_data", "fit", "evaluate_model",
           "item_features"]

TEXT_COLUMNS = ("text", "tag", "review", "query")
EXPOSURES = ("lift", "slots")


@dataclass
class TrainConfig:
    """Attributes:
        epochs: maximum epochs; training stops earlier when validation NDCG@10 has not improved for ``patience``.
        batch_size: training windows per step.  max_len: events per window (and per evaluation context).
        stride: a new window starts every ``stride`` events, so the first targets of a window still see
            ``max_len - stride`` events of context (default ``max_len // 2``: on ml-latest-small it reached a better
            validation NDCG@10 in less time than windows without overlap).
        learning_rate, weight_decay: AdamW.  seed: makes CPU runs reproducible.
        ema_decay: validation and the saved model use an exponential moving average of the weights, updated
            after every step with this decay (0 = the raw weights). Averaging smooths the step-to-step noise
            that makes single-epoch validation scores jump, so early stopping picks a model that generalises
            rather than a lucky epoch.
        device: ``"auto"`` (CUDA when available), ``"cpu"``...
        new_item_recall_ratio: the exposure new items (items not seen in training) get: after training, how
            they are ranked is chosen on validation so that the Recall@20 of users whose target is a new item
            reaches this fraction of the other users' Recall@20 (default 0.5), the way ``new_item_exposure`` says.
            Recommending items nobody has interacted with yet costs the others some recall; ``0`` sets no target:
            new items are lifted as far as validation NDCG@10 says (see ``new_item_bias_grid``), which on
            ml-latest-small is hardly at all, so they are almost never recommended.
        new_item_exposure: how ``new_item_recall_ratio`` is reached. ``"slots"`` (default): no lift, and the fewest
            of the last places of each top ``model.new_item_slot_depth`` (20) reserved for the best new items
            (:func:`calibrate_new_item_slots`); trained items keep their order above them, so wherever new items
            rarely reached the top, NDCG@10 does not move. ``"lift"``: new items' scores are lifted by the smallest
            multiple of the scores' standard deviation that reaches the ratio, to an eighth of a grid step (the
            multiple with the highest ratio when none does); lifted items land among the first places too.
        new_item_bias_grid: the lifts (multiples of the scores' standard deviation) tried for new items, by NDCG@10
            when ``new_item_recall_ratio`` is 0, and as the start of the search with ``new_item_exposure="lift"``
            (empty: no lift; how new items are built is still chosen).
        new_item_neighbours: after training, new items built from the vectors of this many trained items with the
            nearest texts are tried beside new items built from their own content, and kept when they validate
            better (see :func:`calibrate_new_item_bias`); 0: never tried.
        model: the network (see :class:`~mmrec.model.ModelConfig`).
    """

    epochs: int = 30
    batch_size: int = 128
    max_len: int = 50
    stride: int | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    ema_decay: float = 0.98
    patience: int = 3
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 256
    show_progress: bool | None = None
    new_item_bias_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    new_item_recall_ratio: float = 0.5
    new_item_neighbours: int = 20
    new_item_exposure: str = "slots"
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_len", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.new_item_neighbours < 0:
            raise ValueError(f"new_item_neighbours must be >= 0, got {self.new_item_neighbours}")
        if self.new_item_recall_ratio < 0:
            raise ValueError(f"new_item_recall_ratio must be >= 0, got {self.new_item_recall_ratio}")
        if self.new_item_exposure not in EXPOSURES:
            raise ValueError(f"new_item_exposure must be one of {EXPOSURES}, got {self.new_item_exposure!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass
class TrainingData:
    """Everything a training run reads: the split, merged behaviour, item features and event texts."""

    split: Split
    behaviour: Behaviour
    features: ItemFeatures
    item_ids: tuple[str, ...]
    event_names: tuple[str, ...]
    text_table: torch.Tensor
    encoders: dict[str, list[str]]
    n_context_dropped: int = 0
    held_out: np.ndarray | None = None


def item_features(store: Store, item_ids: list[str], known: np.ndarray | None = None,
                  modalities: Collection[str] = ("text", "image")) -> ItemFeatures:
    """Stored features of ``item_ids`` as tensors; ``known`` (bool) marks items whose ID token may be used. Only
    ``modalities`` are read: a model trained on a store without images has untrained image weights, so a poster
    embedded later must not reach them."""
    _, text, has_text = store.feature_matrix("text", item_ids)
    _, image, has_image = store.feature_matrix("image", item_ids)
    n = len(item_ids)
    if text.shape[1] == 0:
        text = np.zeros((n, 384), np.float32)
    if image.shape[1] == 0:
        image = np.zeros((n, 1280), np.float32)
    present = np.stack([has_text & ("text" in modalities), has_image & ("image" in modalities)], axis=1)
    return ItemFeatures(
        text=torch.from_numpy(text),
        image=torch.from_numpy(image),
        present=torch.from_numpy(present),
        id_index=torch.arange(n),
        known=torch.from_numpy(np.zeros(n, bool) if known is None else known),
    )


def embed_event_texts(store: Store, texts: list[str], text_encoder=None, encode_missing: bool = True) -> np.ndarray:
    """``(T, 384)`` vectors of behaviour texts, cached in the store so a text is encoded once per encoder.

    Without ``text_encoder`` the texts are looked up under the encoder that embedded the store's item texts, and
    the encoder is only loaded when some text is not cached yet (``encode_missing=False``: ``LookupError`` then)."""
    if not texts:
        return np.zeros((0, 384), np.float32)
    stored = store.encoders().get("text", [])
    if text_encoder is None and len(stored) != 1:
        if not encode_missing:
            raise LookupError(f"store {store.path}: no single text encoder to look cached texts up under")
        text_encoder = _text_encoder()
    version = text_encoder.version if text_encoder is not None else stored[0]
    if len(stored) == 1 and version != stored[0]:
        # vectors from two encoders would mix in one model's inputs
        raise ValueError(f"store {store.path}: item texts were embedded with {stored[0]}, but the text encoder is "
                         f"{version}; re-run `mmrec embed` first")
    keys = [hashlib.sha256(f"{version}\0{t}".encode()).hexdigest() for t in texts]
    cached = store.cached_texts(keys)
    missing = [i for i, k in enumerate(keys) if k not in cached]
    if missing:
        if not encode_missing:
            raise LookupError(f"{len(missing)} of {len(texts)} texts are not cached yet")
        if text_encoder is None:
            text_encoder = _text_encoder()
            if text_encoder.version != version:
                raise ValueError(f"store {store.path}: item texts were embedded with {version}, but the installed "
                                 f"text encoder is {text_encoder.version}; re-run `mmrec embed` first")
        vectors = text_encoder.encode([texts[i] for i in missing])
        fresh = {keys[i]: v for i, v in zip(missing, vectors)}
        store.cache_texts(fresh)
        cached.update(fresh)
    return np.stack([cached[k] for k in keys]).astype(np.float32)


def _text_encoder():
    from .encoders.text import TextEncoder

    return TextEncoder()


def _context_events(path, split: Split, items: ItemIndex, store: Store, text_encoder,
                    event_names: Sequence[str] | None = None) -> tuple[ContextEvents, int]:
    """Text-bearing events of the split's users, their texts cleaned and embedded; returns them and the number of
    rows dropped (unknown user or item, empty text, bad timestamp, a repeat of an earlier row). ``event_names``:
    a trained model's event vocabulary, which the events' codes must follow (an event it lacks is an error)."""
    frame = read_table(path)
    text_column = next((c for c in TEXT_COLUMNS if c in frame.columns), None)
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in frame.columns]
    if missing or text_column is None:
        raise ValueError(f"{path}: context events need user_id, item_id, timestamp and one of {TEXT_COLUMNS} "
                         f"(columns: {list(frame.columns)})")
    # Without an `event` column the event is named after the text column: tags.csv rows are "tag" events.
    events = frame["event"].astype(str) if "event" in frame.columns else pd.Series(text_column, index=frame.index)
    texts = pd.Series(clean_behaviour_texts(frame[text_column].tolist()), index=frame.index)
    # Ids and timestamps are read as interactions are (date strings, float-widened ids...); unreadable rows drop.
    timestamps, readable = _readable_timestamps(frame["timestamp"])
    user_pos = pd.Index(split.user_ids).get_indexer(_ids_or_empty(frame["user_id"], "user_id"))
    item_pos = pd.Index(items.ids).get_indexer(_ids_or_empty(frame["item_id"], "item_id"))
    usable = (user_pos >= 0) & (item_pos >= 0) & (texts != "").to_numpy() & readable
    # one of equal (user, timestamp, item, event, cleaned text) rows, as the store's event log keeps
    repeat = pd.DataFrame({"u": user_pos, "t": timestamps, "i": item_pos, "e": events.to_numpy(),
                           "x": texts.to_numpy()}).duplicated().to_numpy()
    keep = np.flatnonzero(usable & ~repeat)
    names = tuple(split.event_names) + tuple(sorted(set(events.iloc[keep]) - set(split.event_names)))
    if event_names is not None:
        unknown = sorted(set(names) - set(event_names))
        if unknown:
            raise ValueError(f"{path}: event(s) {unknown} are not among the model's events {list(event_names)}")
        names = tuple(event_names)
    unique, text_index = np.unique(texts.iloc[keep].to_numpy(dtype=str), return_inverse=True)
    return ContextEvents(
        user=user_pos[keep].astype(np.int64),
        item=item_pos[keep].astype(np.int64),
        timestamp=timestamps[keep],
        event=pd.Index(names).get_indexer(events.iloc[keep]).astype(np.int64),
        text=text_index.reshape(-1).astype(np.int64),
        text_vectors=embed_event_texts(store, unique.tolist(), text_encoder),
        event_names=names,
    ), int(len(frame) - len(keep))


def load_training_data(
    store: Store,
    interactions,
    context_events=None,
    text_encoder=None,
    unknown_items: str = "error",
    n_gap_buckets: int = 28,
    hold_out: float = 0.0,
    hold_out_seed: int = 0,
    event_names: Sequence[str] | None = None,
    interaction_events: Sequence[str] | None = None,
) -> TrainingData:
    """Read interactions (and optional text-bearing context events such as ``tags.csv``) against the store's
    items and build the leave-one-out split and behaviour sequences.

    ``event_names`` / ``interaction_events``: a trained model's event vocabulary (all events / those of the
    interactions), so evaluation codes events as training did; a name outside it is an error.

    ``hold_out > 0`` applies the cold-start protocol (:func:`mmrec.data.hold_out_items`): that share of items,
    chosen by ``hold_out_seed``, is removed from training, their context events (tags) included."""
    item_ids = store.item_ids()
    if not item_ids:
        raise ValueError(f"store {store.path} has no items: run `mmrec embed` first")
    tagged = store.items_with_text_field("tags")
    if tagged:
        warnings.warn(
            f"store {store.path}: the item text of {tagged} items holds a 'tags' column. If it gathers tags written "
            "at any time (MovieLens items.csv's does), validation and test metrics read behaviour from after the "
            "split; for a fair evaluation embed with --text-columns title,genres and pass tags as --context-events",
            stacklevel=2)
    items = ItemIndex(tuple(item_ids))
    inter = load_interactions(interactions, items, event_vocab=interaction_events, unknown_items=unknown_items)
    source = interactions if isinstance(interactions, (str, Path)) else "interactions"
    if inter.n_dropped:
        warnings.warn(f"{source}: skipped {inter.n_dropped} interaction rows naming items the store does not "
                      "hold", stacklevel=2)
    if inter.n_repeated:
        warnings.warn(f"{source}: {inter.n_repeated} rows repeat an earlier row's user, timestamp, item and "
                      "event; each such event counts once", stacklevel=2)
    split = leave_one_out(inter)
    held_out = None
    if hold_out > 0:
        split, held_out = hold_out_items(split, hold_out, hold_out_seed)
    context, dropped = (None, 0)
    if context_events is not None:
        context, dropped = _context_events(context_events, split, items, store, text_encoder, event_names)
        if held_out is not None:
            context = context.without_items(held_out)
    behaviour = build_behaviour(split, context, n_gap_buckets)
    names = context.event_names if context is not None else tuple(event_names or split.event_names)
    features = item_features(store, item_ids, split.train_item_mask())
    return TrainingData(
        split=split, behaviour=behaviour, features=features, item_ids=tuple(item_ids), event_names=names,
        text_table=torch.from_numpy(behaviour.text_vectors.reshape(-1, 384)),
        encoders=store.encoders(), n_context_dropped=dropped, held_out=held_out,
    )


@dataclass
class FitResult:
    """The best model (by validation NDCG@10), its epoch, and one log row per epoch."""

    model: MultimodalRecommender
    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict]
    seconds: float

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(len(self.history), 1)


@torch.no_grad()
def evaluate_model(
    model: MultimodalRecommender, data: TrainingData, stage: str = "test", max_len: int = 50,
    batch_size: int = 256, users: np.ndarray | None = None,
) -> EvalResult:
    """Full-ranking evaluation of ``model`` under the README's evaluation protocol (see :func:`mmrec.evaluation.evaluate`)."""
    model.eval()
    device = next(model.parameters()).device
    vectors = model.item_vectors(data.features.to(device))
    table = data.text_table.to(device)
    new_items = ~data.features.known.to(device)
    history = data.split.history(stage)  # once: building it copies every event
    targets = torch.from_numpy(data.split.target(stage))

    def score(_batch, user_index: torch.Tensor) -> torch.Tensor:
        rows = user_index.cpu().numpy()
        context = data.behaviour.context(stage, rows, max_len).to(device)
        taken = history.take(rows)
        exclude = torch.zeros((len(rows), len(data.item_ids)), dtype=torch.bool)
        exclude[torch.from_numpy(taken.row_of), torch.from_numpy(taken.item)] = True
        # evaluate() ranks a target the user consumed before, as it does for the baselines; masking it here
        # would score it -inf and hide it from the re-ranker
        exclude[torch.arange(len(rows)), targets[rows]] = False
        return model.full_sort_scores(context, vectors, exclude.to(device), table, new_items)

    return evaluate(score, data.split, stage, batch_size=batch_size, users=users, max_len=1)


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
    model: MultimodalRecommender, data: TrainingData, grid: tuple[float, ...], max_len: int = 50,
    batch_size: int = 256, min_recall_ratio: float = 0.0, neighbours: int = 0,
) -> tuple[float, dict[str, float]]:
    """Choose how far items not seen in training are lifted, and from which content they are built, on validation.

    A multiple ``m`` of ``grid`` adds ``m`` standard deviations of the validation retrieval scores to new items'
    retrieval scores (``config.new_item_bias``) and ``m`` standard deviations of the re-ranker's logits on those
    candidates to their logits (``config.new_item_logit_bias``). Neither stage ever ranked a new item against
    trained ones during training, so without a lift they sit too low to be recommended at all.

    The chosen multiple has the best NDCG@10 (ties keep the smaller lift) or, with ``min_recall_ratio > 0``, is the
    smallest whose :func:`new_item_recall_ratio` reaches ``min_recall_ratio``, searching on past the grid's largest
    multiple up to 8 times it (the highest ratio when none does), then halving the step that first reached it three
    times: the smallest multiple tried that reaches it, at most an eighth of that step above the one needed.

    This is tried for each way of building new items (:func:`_new_item_content_options`: all their content; for a
    model reading text and images, their text alone, ``config.new_item_text_only``; with ``neighbours`` > 0, the
    vectors of that many trained items with the nearest texts, ``config.new_item_neighbours``), keeping the best:
    the higher NDCG@10 or, with ``min_recall_ratio > 0``, the higher NDCG@10 among those reaching the ratio (the
    higher ratio when none does); ties keep the earlier in that list.
    Returns the chosen multiple and the validation metrics (``cold_`` ones included) it reached."""
    config = model.config
    options = _new_item_content_options(config, data.features, neighbours)
    before = _new_item_settings(config)
    found = {}
    try:
        for option in options:
            option.apply(config)
            found[option] = _calibrate_lift(model, data, grid, max_len, batch_size, min_recall_ratio)
    except BaseException:
        _restore_new_item_settings(config, before)
        raise
    if min_recall_ratio > 0:
        reached = [o for o in options if found[o].ratio >= min_recall_ratio]
        chosen = max(reached or options, key=lambda o: (found[o].metrics["ndcg@10"] if reached else found[o].ratio,
                                                         -options.index(o)))
    else:
        chosen = max(options, key=lambda o: (found[o].metrics["ndcg@10"], -options.index(o)))
    lift = found[chosen]
    chosen.apply(config)
    config.new_item_bias, config.new_item_logit_bias = lift.bias, lift.logit_bias
    return lift.multiple, lift.metrics


_NEW_ITEM_SETTINGS = ("new_item_text_only", "new_item_neighbours", "new_item_bias", "new_item_logit_bias",
                      "new_item_slots")


def _new_item_settings(config: ModelConfig) -> tuple:
    return tuple(getattr(config, name) for name in _NEW_ITEM_SETTINGS)


def _restore_new_item_settings(config: ModelConfig, values: tuple) -> None:
    for name, value in zip(_NEW_ITEM_SETTINGS, values):
        setattr(config, name, value)


class NewItemContent(NamedTuple):
    """What a never-trained item's vector is built from (see :class:`~mmrec.model.ModelConfig`)."""

    text_only: bool = False
    neighbours: int = 0

    def apply(self, config: ModelConfig) -> None:
        config.new_item_text_only, config.new_item_neighbours = self.text_only, self.neighbours


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


def _calibrate_lift(model: MultimodalRecommender, data: TrainingData, grid: tuple[float, ...], max_len: int,
                    batch_size: int, min_recall_ratio: float) -> _Lift:
    """The lift search of :func:`calibrate_new_item_bias` for the model's current item vectors."""
    config = model.config
    config.new_item_bias = config.new_item_logit_bias = 0.0
    unlifted = evaluate_model(model, data, "valid", max_len, batch_size)
    results = {0.0: unlifted}
    if not grid or bool(data.features.known.all()) or not unlifted.is_cold.any():
        return _Lift(0.0, 0.0, 0.0, {**unlifted.metrics, **unlifted.cold_metrics}, new_item_recall_ratio(unlifted))
    dot_scale, logit_scale = new_item_lift_scales(model, data, max_len)
    multiples = sorted(m for m in grid if m > 0)
    if min_recall_ratio > 0 and multiples:
        # an exposure target may need more lift than NDCG ever would: keep going past the grid
        multiples += [multiples[-1] * f for f in _BEYOND_GRID]
    ratios = {0.0: new_item_recall_ratio(unlifted)}

    def try_lift(multiple: float) -> bool:
        config.new_item_bias, config.new_item_logit_bias = multiple * dot_scale, multiple * logit_scale
        results[multiple] = evaluate_model(model, data, "valid", max_len, batch_size)
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
    model: MultimodalRecommender, data: TrainingData, min_recall_ratio: float, max_len: int = 50,
    batch_size: int = 256, neighbours: int = 0,
) -> tuple[int, dict[str, float]]:
    """Choose ``config.new_item_slots`` on validation: the fewest places (up to half of ``new_item_slot_depth``)
    that give users whose target is a new item a :func:`new_item_recall_ratio` of ``min_recall_ratio``; when none
    does, the fewest with the highest ratio, or none if no number of places gives those users a single hit (a model
    that cannot tell new items apart, ID only, would fill them with arbitrary items). Lifts are set to 0: slots
    order new items by their own scores. Like :func:`calibrate_new_item_bias`, each way of building new items is
    tried (``neighbours``: how many trained items a new one may take its vector from) and the one needing fewer
    places is kept (then the higher NDCG@10, then the earlier way). Returns the places and the validation metrics
    (``cold_`` included) they reached; no new item among the validation targets means 0 places."""
    config = model.config
    options = _new_item_content_options(config, data.features, neighbours)
    tried = range(1, config.new_item_slot_depth // 2 + 1) if len(data.split.cold_users("valid")) else (0,)
    before = _new_item_settings(config)
    config.new_item_bias = config.new_item_logit_bias = 0.0
    found = {}
    try:
        for option in options:
            option.apply(config)
            results = {}
            for slots in tried:
                config.new_item_slots = slots
                results[slots] = evaluate_model(model, data, "valid", max_len, batch_size)
                if new_item_recall_ratio(results[slots]) >= min_recall_ratio:
                    break
            best = max(results, key=lambda n: (new_item_recall_ratio(results[n]), -n))
            if new_item_recall_ratio(results[best]) == 0 and best:
                config.new_item_slots = best = 0
                results[0] = evaluate_model(model, data, "valid", max_len, batch_size)
            found[option] = (best, results[best])
    except BaseException:
        _restore_new_item_settings(config, before)
        raise

    def preference(option: NewItemContent) -> tuple:
        slots, result = found[option]
        ratio = new_item_recall_ratio(result)
        return ratio >= min_recall_ratio, -slots if ratio >= min_recall_ratio else ratio, \
            result.metrics["ndcg@10"], -options.index(option)

    chosen = max(options, key=preference)
    chosen.apply(config)
    config.new_item_slots, result = found[chosen]
    return config.new_item_slots, {**result.metrics, **result.cold_metrics}


@torch.no_grad()
def new_item_lift_scales(model: MultimodalRecommender, data: TrainingData, max_len: int = 50) -> tuple[float, float]:
    """The units of the new-item lift: the standard deviation of the retrieval scores of (up to 1,024) validation
    users over every item, and of the re-ranker's logits on their retrieval candidates."""
    device = next(model.parameters()).device
    vectors = model.item_vectors(data.features.to(device))
    rows = np.arange(min(data.split.n_users, 1024))
    context = data.behaviour.context("valid", rows, max_len).to(device)
    interest = model.interests(context, vectors, data.text_table.to(device))
    dot = interest @ vectors.T
    top = dot.topk(min(max(model.config.scorer.rerank, 1), dot.shape[1]), dim=1).indices
    return float(dot.std()), float(model.scorer.logits(interest, vectors[top]).std())


def new_item_recall_ratio(result: EvalResult) -> float:
    """Recall@20 of the users whose target was never trained on, over the other users' Recall@20 (0 when either
    group is empty or the others' recall is 0)."""
    hits = result.per_user["recall@20"]
    cold, warm = hits[result.is_cold], hits[~result.is_cold]
    if len(cold) == 0 or len(warm) == 0 or warm.mean() == 0:
        return 0.0
    return float(cold.mean() / warm.mean())


class WeightAverage:
    """Exponential moving average of a model's weights, bias-corrected like Adam's moments (the average of the
    first ``t`` steps is ``shadow / (1 - decay**t)``), so it is a true average even after a few steps on small
    data. ``update`` after each optimiser step; ``materialise`` writes the average into ``self.model`` (a copy)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay, self.steps = decay, 0
        self.model = copy.deepcopy(model)
        self.shadow = [torch.zeros_like(p) for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.steps += 1
        torch._foreach_mul_(self.shadow, self.decay)
        torch._foreach_add_(self.shadow, [p.detach() for p in model.parameters()], alpha=1.0 - self.decay)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)

    @torch.no_grad()
    def materialise(self) -> None:
        if self.steps == 0:
            return
        correction = 1.0 - self.decay ** max(self.steps, 1)
        for target, shadow in zip(self.model.parameters(), self.shadow):
            target.copy_(shadow / correction)


def check_store_modalities(config: ModelConfig, encoders: dict[str, list[str]], log: Callable[[str], None] | None
                           = None) -> None:
    """Refuse a model whose only item signals are modalities the store holds no features for (every item would
    score the same); ``log`` hears about a requested modality that is missing while others carry the signal."""
    wanted = [m for m, on in (("text", config.use_text), ("image", config.use_image)) if on]
    missing = [m for m in wanted if m not in encoders]
    if missing and not config.use_id and len(missing) == len(wanted):
        hint = {"text": "text columns", "image": "posters (--images-root)"}
        raise ValueError(
            f"modalities: the model reads only {' and '.join(missing)}, but the store holds no {' or '.join(missing)} "
            f"features, so every item would look the same; embed the catalogue with "
            f"{' and '.join(hint[m] for m in missing)} or choose modalities the store has ({sorted(encoders) or 'none'})")
    if missing and log:
        log(f"the store holds no {' or '.join(missing)} features: training without them")


@contextlib.contextmanager
def _repeatable_training(device: torch.device) -> Iterator[None]:
    """Deterministic kernels while a model trains on a CPU; the previous setting is restored afterwards.

    Why: with more than one thread, the backward of gathering rows of a table (the item vectors of a batch) adds
    gradients into shared rows in thread-timing order, so two CPU runs of mmrec's model with the same seed differ in
    the last bits after one epoch and in validation NDCG after a dozen. The deterministic kernels gave bit-equal
    runs at no measurable cost (ml-latest-small, 2 threads: 38-50 s per epoch either way). The baselines' fits
    repeat without it. The flag is process-wide while on. CUDA runs are left as they are: there it also needs
    ``CUBLAS_WORKSPACE_CONFIG`` set before CUDA starts.
    """
    if device.type != "cpu":
        yield
        return
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    # warn_only: an op without a deterministic CPU kernel warns instead of stopping the training
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn_only)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def fit(data: TrainingData, config: TrainConfig, log: Callable[[str], None] | None = print) -> FitResult:
    """Train a fresh model on ``data`` with early stopping on validation NDCG@10; returns the best weights."""
    from .encoders.precision import resolve_device

    check_store_modalities(config.model, data.encoders, log)
    _seed_everything(config.seed)
    device = resolve_device(config.device)
    if device.type == "cuda":
        # TF32 matmuls on GPU (the full softmax is one large matrix product per step); CPU stays float32.
        torch.backends.cuda.matmul.allow_tf32 = True
    model_config = copy.deepcopy(config.model)
    # how new items are lifted and built is chosen on validation after training; a value carried over from another
    # model's config would skew the validation curve that early stopping reads
    model_config.new_item_bias = model_config.new_item_logit_bias = 0.0
    model_config.new_item_text_only = False
    model_config.new_item_neighbours = 0
    model_config.new_item_slots = 0
    model_config.fusion.n_items = len(data.item_ids) if model_config.use_id else 0
    model_config.interest.n_events = len(data.event_names)
    model_config.interest.text_dim = 384 if len(data.text_table) else 0
    model_config.scorer.dim = model_config.fusion.item_dim
    model_config.interest.item_dim = model_config.fusion.item_dim
    model = MultimodalRecommender(model_config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    averaged = WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None
    evaluated = averaged.model if averaged is not None else model
    windows = data.behaviour.windows(config.max_len, config.stride or max(1, config.max_len // 2))
    features = data.features.to(device)
    table = data.text_table.to(device)
    rng = np.random.default_rng(config.seed)
    show = config.show_progress if config.show_progress is not None else True
    best, best_epoch, best_state, history, waited = -1.0, 0, None, [], 0
    started = time.perf_counter()
    with _repeatable_training(device):
        for epoch in range(1, config.epochs + 1):
            model.train()
            tick = time.perf_counter()
            order = rng.permutation(len(windows))
            totals: dict[str, float] = {}
            steps = range(0, len(order), config.batch_size)
            for start in tqdm(steps, desc=f"epoch {epoch}", leave=False, disable=not show, unit="batch"):
                batch = windows.batch(order[start : start + config.batch_size]).to(device)
                loss, parts = model.loss(batch, features, table)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimizer.step()
                if averaged is not None:
                    averaged.update(model)
                for k, v in parts.items():
                    totals[k] = totals.get(k, 0.0) + v / len(steps)
            train_seconds = time.perf_counter() - tick
            if averaged is not None:
                averaged.materialise()
            valid = evaluate_model(evaluated, data, "valid", config.max_len, config.eval_batch_size).metrics
            row = {"epoch": epoch, **{f"loss_{k}": round(v, 4) for k, v in totals.items()},
                   **{f"valid_{k}": round(v, 4) for k, v in valid.items()}, "train_seconds": round(train_seconds, 2)}
            history.append(row)
            improved = valid["ndcg@10"] > best
            if improved:
                best, best_epoch, waited = valid["ndcg@10"], epoch, 0
                best_state = {k: v.detach().clone() for k, v in evaluated.state_dict().items()}
                best_valid = valid
            else:
                waited += 1
            if log:
                parts_text = " ".join(f"{k}={v:.4f}" for k, v in totals.items())
                log(f"epoch {epoch:>2}  {parts_text}  valid ndcg@10={valid['ndcg@10']:.4f} "
                    f"recall@10={valid['recall@10']:.4f}  {train_seconds:.1f}s{'  *' if improved else ''}")
            if waited >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    if config.new_item_exposure == "slots" and config.new_item_recall_ratio > 0:
        slots, calibrated = calibrate_new_item_slots(model, data, config.new_item_recall_ratio, config.max_len,
                                                     config.eval_batch_size, config.new_item_neighbours)
        chosen = f"new items in the last {slots} of every top {model.config.new_item_slot_depth}"
    else:
        lift, calibrated = calibrate_new_item_bias(model, data, config.new_item_bias_grid, config.max_len,
                                                   config.eval_batch_size, config.new_item_recall_ratio,
                                                   config.new_item_neighbours)
        chosen = f"new-item lift {lift:g} std"
    if log:
        source = (" (from their text alone)" if model.config.new_item_text_only else
                  f" (from their {model.config.new_item_neighbours} nearest trained items by text)"
                  if model.config.new_item_neighbours else "")
        log(f"{chosen}{source}: valid ndcg@10={calibrated['ndcg@10']:.4f} "
            f"cold recall@20={calibrated['cold_recall@20']:.4f}")
    best_valid = {k: v for k, v in calibrated.items() if not k.startswith("cold_")}
    return FitResult(model=model, best_epoch=best_epoch, best_valid=best_valid, history=history,
                     seconds=time.perf_counter() - started)
