"""Training our model: fusion + GRU + scorer on stored encoder features (encoders frozen).

Objective: next-item cross-entropy over every item seen in training (full softmax, no sampled negatives), the
re-ranker's loss, the fusion's contrastive alignment and the cold-item loss (see
:class:`~mmrec.networks.model.ModelConfig`). Early stopping on validation NDCG@10 of an average of the weights, under
the evaluation protocol; then new items' policy is chosen on validation (:mod:`mmrec.train.calibration`). Seeded and
reproducible on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from ..encoders.precision import resolve_device
from ..networks.model import ModelConfig, MultimodalRecommender
from .calibration import calibrate_new_item_bias, calibrate_new_item_slots
from .config import TrainConfig
from .data import TrainingData
from .distributed import (Ranks, check_in_sync, mean_over_ranks, process_batch_size, rank_zero_decides,
                          separate_random_streams, share, training_loss)
from .evaluate import evaluate_model

__all__ = ["FitResult", "WeightAverage", "check_store_modalities", "fit", "repeatable_training", "seed_everything",
           "sized_config"]


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


def sized_config(config: ModelConfig, data: TrainingData) -> ModelConfig:
    """``config`` sized for ``data``: the ID vocabulary (items, when IDs are used), the event vocabulary, the text
    and image feature widths of the store (a modality it lacks keeps the configured width: its input is all
    zeros, masked out) and the event-text width (0 without text events)."""
    fusion = replace(config.fusion, n_items=len(data.item_ids) if config.use_id else 0,
                     text_dim=data.features.text.shape[1] or config.fusion.text_dim,
                     image_dim=data.features.image.shape[1] or config.fusion.image_dim)
    interest = replace(config.interest, n_events=len(data.event_names),
                       text_dim=data.text_table.shape[1] if len(data.text_table) else 0, item_dim=fusion.item_dim,
                       use_gaps=data.split.timed)
    return replace(config, fusion=fusion, interest=interest, scorer=replace(config.scorer, dim=fusion.item_dim))


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and NumPy's global generator: call before building a model so its initial weights
    are reproducible."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


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
def repeatable_training(device: torch.device) -> Iterator[None]:
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


def fit(data: TrainingData, config: TrainConfig, log: Callable[[str], None] | None = print,
        ranks: Ranks | None = None) -> FitResult | None:
    """Train a fresh model on ``data`` with early stopping on validation NDCG@10; returns the best weights.

    ``ranks``: this process's place in a torchrun job (:mod:`mmrec.train.distributed`), which decides the device.
    Each process trains on its share of every batch; rank 0 validates, decides for all when to stop, calibrates
    and returns the result, the others return ``None``."""
    check_store_modalities(config.model, data.encoders, log)
    seed_everything(config.seed)
    device = ranks.device if ranks is not None else resolve_device(config.device)
    main = ranks is None or ranks.main
    if device.type == "cuda":
        # TF32 matmuls on GPU (the full softmax is one large matrix product per step); CPU stays float32.
        torch.backends.cuda.matmul.allow_tf32 = True
    model = MultimodalRecommender(sized_config(config.model, data)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    averaged = WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None
    evaluated = averaged.model if averaged is not None else model
    loss_of = training_loss(model, ranks)
    separate_random_streams(config.seed, ranks)
    if ranks is not None and log:
        per_process = process_batch_size(config.batch_size, ranks)
        log(f"{ranks.world_size} processes on {device.type}: each trains on {per_process} windows of every batch of "
            f"{per_process * ranks.world_size}")
    max_len = model.max_len
    windows = data.behaviour.windows(max_len, config.stride or max(1, max_len // 2))
    features = data.features.to(device)
    table = data.text_table.to(device)
    model.bind(features, table)
    evaluated.bind(features, table)
    rng = np.random.default_rng(config.seed)
    show = (config.show_progress if config.show_progress is not None else True) and main
    best, best_epoch, best_state, history, waited = -1.0, 0, None, [], 0
    started = time.perf_counter()
    with repeatable_training(device):
        for epoch in range(1, config.epochs + 1):
            model.train()
            tick = time.perf_counter()
            order, batch_size = share(rng.permutation(len(windows)), config.batch_size, ranks)
            totals: dict[str, float] = {}
            steps = range(0, len(order), batch_size)
            for start in tqdm(steps, desc=f"epoch {epoch}", leave=False, disable=not show, unit="batch"):
                batch = windows.batch(order[start : start + batch_size]).to(device)
                loss = loss_of(batch)
                parts = model.loss_parts
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimizer.step()
                if averaged is not None:
                    averaged.update(model)
                for k, v in parts.items():
                    totals[k] = totals.get(k, 0.0) + v / len(steps)
            totals = mean_over_ranks(totals, ranks)
            train_seconds = time.perf_counter() - tick
            if averaged is not None:
                averaged.materialise()
            if main:
                valid = evaluate_model(evaluated, data, "valid", config.eval_batch_size).metrics
                row = {"epoch": epoch, **{f"loss_{k}": round(v, 4) for k, v in totals.items()},
                       **{f"valid_{k}": round(v, 4) for k, v in valid.items()},
                       "train_seconds": round(train_seconds, 2)}
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
            if rank_zero_decides(waited >= config.patience, ranks):
                break
    check_in_sync(ranks, model, evaluated)
    if not main:
        return None
    model.load_state_dict(best_state)
    model.eval()
    if config.new_item_exposure == "slots" and config.new_item_recall_ratio > 0:
        slots, calibrated = calibrate_new_item_slots(model, data, config.new_item_recall_ratio,
                                                     config.eval_batch_size, config.new_item_neighbours)
        chosen = f"new items in the last {slots} of every top {model.config.new_item_slot_depth}"
    else:
        lift, calibrated = calibrate_new_item_bias(model, data, config.new_item_bias_grid, config.eval_batch_size,
                                                   config.new_item_recall_ratio, config.new_item_neighbours)
        chosen = f"new-item lift {lift:g} std"
    if log:
        policy = model.new_items
        source = (" (from their text alone)" if policy.text_only else
                  f" (from their {policy.neighbours} nearest trained items by text)" if policy.neighbours else "")
        log(f"{chosen}{source}: valid ndcg@10={calibrated['ndcg@10']:.4f} "
            f"cold recall@20={calibrated['cold_recall@20']:.4f}")
    best_valid = {k: v for k, v in calibrated.items() if not k.startswith("cold_")}
    return FitResult(model=model, best_epoch=best_epoch, best_valid=best_valid, history=history,
                     seconds=time.perf_counter() - started)
