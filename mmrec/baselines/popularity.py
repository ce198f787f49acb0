"""Most-popular baseline: every user gets the items ranked by how often they occur in the training part.

Reference: the "POP" baseline of Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback",
UAI 2009 (RecBole ``Pop``). Items never seen in training score 0.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from .base import BaselineModel
from ..data.batch import SequenceBatch
from ..data.split import Split

__all__ = ["Popularity"]


class Popularity(BaselineModel):
    """Training-set interaction counts as scores: ``(B,) users -> (B, n_items)``, the same row for every user.

    Example::

        pop = Popularity(split.n_items)
        pop.prepare(split)
        evaluate(pop, build_behaviour(split), "test")
    """

    trainable: ClassVar[bool] = False

    def __init__(self, n_items: int) -> None:
        super().__init__()
        if n_items < 1:
            raise ValueError(f"n_items: must be >= 1, got {n_items}")
        self.n_items = n_items
        self.register_buffer("counts", torch.zeros(n_items, dtype=torch.float32))

    def prepare(self, split: Split) -> None:
        if split.n_items != self.n_items:
            raise ValueError(f"split: has {split.n_items} items, the model {self.n_items}")
        counts = np.bincount(split.train.item, minlength=self.n_items)
        self.counts.copy_(torch.from_numpy(counts.astype(np.float32)))

    def scores(self, batch: SequenceBatch, exclude: torch.Tensor | None = None) -> torch.Tensor:
        return self.counts[None, :].expand(batch.batch_size, -1)
