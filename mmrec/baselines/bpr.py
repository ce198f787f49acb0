"""BPR-MF: matrix factorisation trained with the Bayesian Personalised Ranking loss, one uniform negative.

Reference: Rendle, Freudenthaler, Gantner, Schmidt-Thieme, "BPR: Bayesian Personalized Ranking from Implicit
Feedback", UAI 2009. As RecBole's ``BPR``: embeddings of size 64 (Xavier-normal init), score = dot product,
loss ``-log sigmoid(s(u, pos) - s(u, neg))`` with the negative drawn uniformly from the items the user has not
interacted with in training.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import BaselineModel
from ..data.batch import SequenceBatch
from ..data.split import Split

__all__ = ["BPR", "BPRConfig", "PairBatch", "PairData"]


@dataclass(frozen=True)
class BPRConfig:
    """``embedding_size``: user and item vector size."""

    embedding_size: int = 64

    def __post_init__(self) -> None:
        if self.embedding_size < 1:
            raise ValueError(f"embedding_size: must be >= 1, got {self.embedding_size}")


@dataclass
class PairBatch:
    """``users``, ``positives``, ``negatives``: ``(B,) int64`` (split positions / item indices)."""

    users: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(self.users.to(device), self.positives.to(device), self.negatives.to(device))


class PairData:
    """Every training (user, item) pair once per epoch, shuffled, each with one fresh uniform negative.

    Negatives are drawn for a whole batch at once and redrawn (vectorised) where they hit the user's training
    items.
    """

    def __init__(self, split: Split) -> None:
        self.users = split.train.row_of  # (N,)
        self.items = split.train.item  # (N,)
        self.n_items = split.n_items
        self._seen = np.unique(self.users * self.n_items + self.items)  # sorted (user, item) keys

    def __len__(self) -> int:
        return len(self.users)

    def _is_seen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + items
        at = np.minimum(np.searchsorted(self._seen, keys), len(self._seen) - 1)
        return self._seen[at] == keys

    def sample_negatives(self, users: np.ndarray, rng: np.random.Generator, max_rounds: int = 100) -> np.ndarray:
        """One item per user that the user has not interacted with in training (uniform over the rest)."""
        negatives = rng.integers(0, self.n_items, size=len(users))
        redo = self._is_seen(users, negatives)
        for _ in range(max_rounds):
            if not redo.any():
                break
            negatives[redo] = rng.integers(0, self.n_items, size=int(redo.sum()))
            redo[redo] = self._is_seen(users[redo], negatives[redo])
        return negatives

    def batches(self, batch_size: int, rng: np.random.Generator | None = None) -> Iterator[PairBatch]:
        rng = np.random.default_rng() if rng is None else rng
        order = rng.permutation(len(self))
        for start in range(0, len(order), batch_size):
            pick = order[start : start + batch_size]
            users = self.users[pick]
            negatives = self.sample_negatives(users, rng)
            yield PairBatch(
                torch.from_numpy(users), torch.from_numpy(self.items[pick]), torch.from_numpy(negatives)
            )


class BPR(BaselineModel):
    """Matrix factorisation: ``score(u, i) = <p_u, q_i>``; ``(B,) users -> (B, n_items)``.

    Example::

        model = BPR(split.n_users, split.n_items)
        fit_baseline(model, split, BaselineTrainConfig(epochs=50))
    """

    default_batch_size: ClassVar[int] = 2048

    def __init__(self, n_users: int, n_items: int, config: BPRConfig | None = None) -> None:
        super().__init__()
        if n_users < 1 or n_items < 1:
            raise ValueError(f"n_users, n_items: must be >= 1, got {n_users}, {n_items}")
        self.config = config or BPRConfig()
        self.n_users, self.n_items = n_users, n_items
        self.user_embedding = nn.Embedding(n_users, self.config.embedding_size)
        self.item_embedding = nn.Embedding(n_items, self.config.embedding_size)
        nn.init.xavier_normal_(self.user_embedding.weight)
        nn.init.xavier_normal_(self.item_embedding.weight)

    def training_data(self, split: Split) -> PairData:
        if (split.n_users, split.n_items) != (self.n_users, self.n_items):
            raise ValueError(
                f"split: has {split.n_users} users and {split.n_items} items, the model {self.n_users} and "
                f"{self.n_items}"
            )
        return PairData(split)

    def loss(self, batch: PairBatch) -> torch.Tensor:
        user = self.user_embedding(batch.users)  # (B, D)
        pos = (user * self.item_embedding(batch.positives)).sum(-1)  # (B,)
        neg = (user * self.item_embedding(batch.negatives)).sum(-1)  # (B,)
        return -F.logsigmoid(pos - neg).mean()

    def scores(self, batch: SequenceBatch, exclude: torch.Tensor | None = None) -> torch.Tensor:
        return self.user_embedding(batch.users) @ self.item_embedding.weight.T  # (B, n_items)
