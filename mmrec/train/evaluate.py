"""Evaluating our model on training data, and the new-item recall ratio that its calibration targets."""

from __future__ import annotations

import numpy as np
import torch

from ..evaluation import EvalResult, evaluate
from ..networks.model import MultimodalRecommender
from .data import TrainingData

__all__ = ["evaluate_model", "new_item_recall_ratio"]


@torch.no_grad()
def evaluate_model(model: MultimodalRecommender, data: TrainingData, stage: str = "test", batch_size: int = 256,
                   users: np.ndarray | None = None) -> EvalResult:
    """Full-ranking evaluation of our ``model`` on ``data`` under the evaluation protocol
    (:func:`mmrec.evaluation.evaluate`), after binding it to ``data``'s item features and event texts."""
    device = next(model.parameters()).device
    model.bind(data.features.to(device), data.text_table.to(device))
    return evaluate(model, data.behaviour, stage, batch_size=batch_size, users=users)


def new_item_recall_ratio(result: EvalResult) -> float:
    """Recall@20 of the users whose target was never trained on, over the other users' Recall@20 (0 when either
    group is empty or the others' recall is 0)."""
    hits = result.per_user["recall@20"]
    cold, warm = hits[result.is_cold], hits[~result.is_cold]
    if len(cold) == 0 or len(warm) == 0 or warm.mean() == 0:
        return 0.0
    return float(cold.mean() / warm.mean())
