"""The contract every model implements (RecBole style) and the shared next-item cross-entropy model.

Every model in mmrec, the ID-only baselines here and :class:`mmrec.networks.model.MultimodalRecommender`, is an
``nn.Module`` with:

- ``loss(batch: SequenceBatch) -> ()`` scalar to minimise;
- ``scores(batch: SequenceBatch, exclude: (B, n_items) bool | None) -> (B, n_items)`` over the whole catalogue,
  what :func:`mmrec.evaluation.evaluate` ranks (``batch.users`` holds the users' split positions);
- ``max_len``: the context length it reads (``None``: it ignores the sequence).

A baseline also builds its own training batches: ``training_data(split)``, once per fit, whose
``batches(batch_size, rng)`` yields one epoch of them.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.batch import SequenceBatch, Windows, training_windows
from ..data.split import Split

__all__ = ["BaselineModel", "Batches", "SequentialBaseline"]


class Batches(Protocol):
    """One epoch of training batches per call; each batch has ``.to(device)``."""

    def __len__(self) -> int: ...

    def batches(self, batch_size: int, rng: np.random.Generator | None = None) -> Iterator[Any]: ...


class BaselineModel(nn.Module, abc.ABC):
    """Base class of the ID-only baselines.

    Class attributes: ``trainable`` (False: :func:`mmrec.train.baselines.fit_baseline` only calls :meth:`prepare`),
    ``default_batch_size`` (training batch size when the train config leaves it unset).
    """

    trainable: ClassVar[bool] = True
    default_batch_size: ClassVar[int] = 64
    max_len: int | None = None

    def prepare(self, split: Split) -> None:
        """Set any statistic computed from the training data (called by ``fit`` before training)."""

    def training_data(self, split: Split) -> Batches:
        """Training batches source, built once per fit (only for ``trainable`` models)."""
        raise TypeError(f"{type(self).__name__} is not trained by gradient descent")

    def loss(self, batch: Any) -> torch.Tensor:
        """Scalar training loss of one batch (only for ``trainable`` models)."""
        raise TypeError(f"{type(self).__name__} has no training loss")

    @abc.abstractmethod
    def scores(self, batch: SequenceBatch, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of every catalogue item: ``(B, L) context -> (B, n_items)``; baselines rank every item, so
        ``exclude`` changes nothing."""


class SequentialBaseline(BaselineModel):
    """Next-item model trained with cross-entropy over all items on :func:`~mmrec.data.batch.training_windows`.

    Subclasses implement :meth:`encode` ``(B, L) -> (B, L, D)`` (position ``j`` sees only positions ``<= j``)
    and :meth:`item_vectors` ``-> (n_items, D)``; the score of item ``i`` after position ``j`` is their dot
    product. Contexts are read padded to ``max_len`` positions, as the training windows are.
    """

    default_batch_size: ClassVar[int] = 64  # windows of up to 50 targets: ~2,300 target positions a batch

    def __init__(self, n_items: int, max_len: int, stride: int | None = None) -> None:
        super().__init__()
        if n_items < 1:
            raise ValueError(f"n_items: must be >= 1, got {n_items}")
        if max_len < 1:
            raise ValueError(f"max_len: must be >= 1, got {max_len}")
        self.n_items = n_items
        self.max_len = max_len
        self.stride = stride

    @abc.abstractmethod
    def encode(self, batch: SequenceBatch) -> torch.Tensor:
        """Hidden state after every position: ``(B, L) -> (B, L, D)``."""

    @abc.abstractmethod
    def item_vectors(self) -> torch.Tensor:
        """Output item vectors ``(n_items, D)`` (the padding row excluded)."""

    def training_data(self, split: Split) -> Windows:
        return training_windows(split, max_len=self.max_len, stride=self.stride)

    def loss(self, batch: SequenceBatch) -> torch.Tensor:
        """Mean cross-entropy over every target position of the windows."""
        targets = batch.next_targets  # (B, L)
        mask = targets != batch.n_items
        hidden = self.encode(batch)[mask]  # (P, D), P target positions
        logits = hidden @ self.item_vectors().T  # (P, n_items)
        return F.cross_entropy(logits, targets[mask])

    def scores(self, batch: SequenceBatch, exclude: torch.Tensor | None = None) -> torch.Tensor:
        batch = batch.padded(self.max_len)
        hidden = self.encode(batch)  # (B, L, D)
        last = hidden[torch.arange(batch.batch_size, device=hidden.device), batch.lengths - 1]  # (B, D)
        return last @ self.item_vectors().T  # (B, n_items)
