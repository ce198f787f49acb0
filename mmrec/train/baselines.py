"""The baselines' training loop: Adam, early stopping on validation NDCG@10, best weights kept (RecBole's trainer).

Example::

    seed_everything(2020)
    model = SASRec(split.n_items)
    result = fit_baseline(model, split, BaselineTrainConfig(epochs=200, patience=10))
    result.best_epoch, result.best_valid.metrics["ndcg@10"], result.seconds_per_epoch
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..baselines.base import BaselineModel
from ..data.behaviour import build_behaviour
from ..data.split import Split
from ..evaluation import EvalResult, evaluate

__all__ = ["BaselineFit", "BaselineTrainConfig", "EpochLog", "fit_baseline"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaselineTrainConfig:
    """Training options (RecBole's defaults where it has one).

    - ``epochs``: at most this many epochs.
    - ``batch_size``: training batch (``None``: the model's ``default_batch_size`` — windows for sequential
      models, (user, item) pairs for BPR).
    - ``learning_rate``, ``weight_decay``: Adam's.
    - ``patience``: stop after this many epochs without a better validation NDCG@10 (RecBole ``stopping_step``).
    - ``eval_batch_size``: users per scoring call during validation.
    - ``seed``: seeds torch (dropout) and the batch shuffling/negative sampling.
    - ``device``: ``"cpu"`` or e.g. ``"cuda"``.
    - ``progress``: tqdm bar over epochs.
    - ``num_threads``: torch CPU threads during the fit, restored afterwards (``None``: leave as is). On a busy
      machine fewer threads than cores can be several times faster (idle threads spin while others wait).
    """

    epochs: int = 100
    batch_size: int | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10
    eval_batch_size: int = 256
    seed: int = 2020
    device: str = "cpu"
    progress: bool = True
    num_threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads: must be >= 1 or None, got {self.num_threads}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1 or None, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate: must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class EpochLog:
    """One epoch: mean training ``loss``, validation ``valid_ndcg10``, ``train_seconds``, ``eval_seconds``."""

    epoch: int
    loss: float
    valid_ndcg10: float
    train_seconds: float
    eval_seconds: float


@dataclass(frozen=True)
class BaselineFit:
    """Outcome of :func:`fit_baseline`; the model holds the weights of ``best_epoch`` afterwards.

    ``seconds_per_epoch`` is the mean training time of an epoch (validation excluded); ``train_seconds`` the
    whole fit, validation included. ``best_epoch`` is 0 for models without training.
    """

    best_epoch: int
    best_valid: EvalResult
    history: list[EpochLog] = field(default_factory=list)
    train_seconds: float = 0.0
    stopped_early: bool = False

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    @property
    def seconds_per_epoch(self) -> float:
        return float(np.mean([h.train_seconds for h in self.history])) if self.history else 0.0


def fit_baseline(model: BaselineModel, split: Split, config: BaselineTrainConfig | None = None) -> BaselineFit:
    """Train ``model`` on ``split``'s training part, early-stopping on validation NDCG@10.

    Each epoch runs once over ``model.training_data(split)`` with Adam, then evaluates the validation stage
    (:func:`mmrec.evaluation.evaluate`, full ranking). The best epoch's weights are kept in memory and loaded
    back at the end; the model is left in eval mode. Models with ``trainable = False`` are only
    ``prepare``-d and validated. Raises ``FloatingPointError`` if the loss becomes NaN/inf.
    """
    config = config or BaselineTrainConfig()
    threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        return _fit(model, split, config)
    finally:
        torch.set_num_threads(threads)


def _fit(model: BaselineModel, split: Split, config: BaselineTrainConfig) -> BaselineFit:
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model.to(device)
    start = time.perf_counter()
    model.prepare(split)
    sequences = build_behaviour(split)

    def validate() -> EvalResult:
        return evaluate(model, sequences, "valid", batch_size=config.eval_batch_size, device=device)

    if not model.trainable:
        return BaselineFit(best_epoch=0, best_valid=validate(), train_seconds=time.perf_counter() - start)

    data = model.training_data(split)
    batch_size = config.batch_size or model.default_batch_size
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    name = type(model).__name__
    history: list[EpochLog] = []
    best_score, best_epoch, best_valid, best_state = -math.inf, 0, None, None
    stale = 0
    with logging_redirect_tqdm(), tqdm(
        range(1, config.epochs + 1), desc=name, unit="epoch", disable=not config.progress
    ) as bar:
        for epoch in bar:
            model.train()
            t0 = time.perf_counter()
            total, n_batches = torch.zeros((), device=device), 0
            for batch in data.batches(batch_size, rng):
                loss = model.loss(batch.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach()
                n_batches += 1
            mean_loss = float(total) / max(n_batches, 1)
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"{name}: training loss became {mean_loss} in epoch {epoch}")
            t1 = time.perf_counter()
            valid = validate()
            score = valid.metrics["ndcg@10"]
            t2 = time.perf_counter()
            history.append(EpochLog(epoch, mean_loss, score, t1 - t0, t2 - t1))
            logger.info(
                "%s epoch %d: loss %.4f, valid ndcg@10 %.4f, %.1f s train + %.1f s valid",
                name, epoch, mean_loss, score, t1 - t0, t2 - t1,
            )
            if score > best_score:
                best_score, best_epoch, best_valid, stale = score, epoch, valid, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
            bar.set_postfix(loss=f"{mean_loss:.4f}", ndcg10=f"{score:.4f}", best=best_epoch)
            if stale >= config.patience:
                break
    assert best_state is not None and best_valid is not None  # at least one epoch ran
    model.load_state_dict(best_state)
    model.eval()
    return BaselineFit(
        best_epoch=best_epoch,
        best_valid=best_valid,
        history=history,
        train_seconds=time.perf_counter() - start,
        stopped_early=len(history) < config.epochs,
    )
