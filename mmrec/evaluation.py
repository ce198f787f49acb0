"""Full-ranking evaluation (docs/evaluation.md) and a paired bootstrap for comparing models.

Every user is ranked against every catalogue item; the items of the user's history (train for ``"valid"``,
train + valid for ``"test"``) are excluded, except the target itself should the user have consumed it before.
One target per user, so Recall@K equals Hit@K. With ``r`` the target's rank (1 = best):

- ``recall@K`` = ``[r <= K]``,  ``ndcg@K`` = ``[r <= K] / log2(r + 1)``,  ``mrr@10`` = ``[r <= 10] / r``.

Ties never favour the target. With ``g`` items scoring above the target and ``t`` others scoring exactly the
same, :class:`TieRule` ``EXPECTED`` (default) averages each metric over the positions ``g + 1 … g + t + 1`` the
target takes when its tie group is ordered at random (the rank reported is the group's mean position,
``g + 1 + t / 2``). Averaging the metric, not the rank, matters because the metrics are not linear in the rank:
popularity ties on most items, and the metric of the mean rank misstates its NDCG@10 by 3%. ``PESSIMISTIC`` puts
every tied item ahead of the target. Only non-excluded items are counted, so the history never affects a rank.

Every model is evaluated alike through the contract of :class:`Ranker` (our model and the baselines).

:func:`evaluate` also keeps each user's top :data:`LIST_LENGTH` items (``EvalResult.top_items``: the items ranked
as above, the history excluded but the target) for the beyond-accuracy metrics of :mod:`mmrec.beyond`.

Example::

    result = evaluate(model, build_behaviour(split), stage="test")
    result.metrics["ndcg@10"], result.cold_metrics["cold_ndcg@10"], result.n_users
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.batch import SequenceBatch
from .data.behaviour import Behaviour
from .data.split import Stage

__all__ = [
    "LIST_LENGTH",
    "METRICS",
    "NEW_ITEM_METRICS",
    "BootstrapResult",
    "EvalResult",
    "Ranker",
    "format_metrics",
    "TieRule",
    "evaluate",
    "metrics_from_ranks",
    "paired_bootstrap",
    "target_ranks",
    "tie_counts",
    "top_items",
]

METRICS: tuple[str, ...] = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10")
"""Metric names, in report order."""
NEW_ITEM_METRICS: tuple[str, ...] = ("new_recall@20", "new_ndcg@10")
"""Cold users' metrics with the target ranked among new items only (``EvalResult.cold_metrics``, prefixed ``cold_``)."""

LIST_LENGTH = 10
"""Length of each user's top list that :func:`evaluate` keeps (``EvalResult.top_items``)."""


class Ranker(Protocol):
    """What :func:`evaluate` needs of a model (every model in mmrec has it).

    - ``max_len``: the context length it reads (``None``: the whole context).
    - ``scores(batch, exclude)``: ``(B, n_items)`` scores of every catalogue item, higher is better, for the
      users' contexts ``batch``; ``exclude (B, n_items)`` bool marks items that will not be ranked (the history
      but the target), which a model may use to spend re-ranking on rankable items.
    - ``eval()``: switches it to inference.
    """

    max_len: int | None

    def scores(self, batch: SequenceBatch, exclude: torch.Tensor | None = None) -> torch.Tensor: ...

    def eval(self): ...


class TieRule(str, Enum):
    """How items scoring exactly the target's score count towards its rank."""

    EXPECTED = "expected"  # metrics averaged over the tie group's positions; rank = 1 + greater + ties / 2
    PESSIMISTIC = "pessimistic"  # rank = 1 + greater + ties


def target_ranks(
    scores: torch.Tensor,
    target: torch.Tensor,
    exclude: torch.Tensor | None = None,
    tie_rule: TieRule | str = TieRule.EXPECTED,
) -> torch.Tensor:
    """Rank of each row's target among the non-excluded items: ``(B, n) , (B,) , (B, n) bool -> (B,) float64``.

    ``exclude`` marks items that are not ranked (the history); the target is always ranked. Raises
    ``ValueError`` if a score is NaN. ``EXPECTED`` gives the tie group's mean position.
    """
    greater, tied = tie_counts(scores, target, exclude)
    weight = 0.5 if TieRule(tie_rule) is TieRule.EXPECTED else 1.0
    return 1.0 + greater + weight * tied


def tie_counts(
    scores: torch.Tensor, target: torch.Tensor, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(greater (B,), tied (B,))`` float64: non-excluded items scoring above each row's target, and the other
    non-excluded items scoring exactly the same. Raises ``ValueError`` if a score is NaN."""
    if torch.isnan(scores).any():
        raise ValueError("scores: contains NaN")
    target = target.to(scores.device)
    rows = torch.arange(scores.shape[0], device=scores.device)
    target_score = scores[rows, target][:, None]  # (B, 1)
    greater = scores > target_score
    tied = scores == target_score
    if exclude is not None:
        keep = ~exclude
        keep[rows, target] = True
        greater &= keep
        tied &= keep
    return greater.sum(1).to(torch.float64), tied.sum(1).to(torch.float64) - 1.0  # the target ties with itself


def top_items(scores: torch.Tensor, exclude: torch.Tensor | None = None, k: int = LIST_LENGTH) -> np.ndarray:
    """Each row's ``k`` best non-excluded items, best first: ``(B, n) , (B, n) bool -> (B, k) int64`` (numpy).

    Places beyond the row's rankable items (fewer than ``k`` not excluded, or scored ``-inf``) hold ``-1``. Ties
    are broken as ``torch.topk`` breaks them."""
    if exclude is not None:
        scores = scores.masked_fill(exclude, float("-inf"))
    best = scores.topk(min(k, scores.shape[1]), dim=1)
    out = np.full((scores.shape[0], k), -1, dtype=np.int64)
    found = best.indices.masked_fill(best.values == float("-inf"), -1)
    out[:, : found.shape[1]] = found.cpu().numpy()
    return out


def metrics_from_ranks(ranks: np.ndarray, tied: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-user metrics ``(U,) float64`` for each name in :data:`METRICS` from target ranks ``(U,)``.

    With ``tied (U,)`` (other items scoring exactly the target's score), ``ranks`` are the tie groups' mean
    positions (``TieRule.EXPECTED``) and each metric is its mean over the positions
    ``ranks - tied / 2 … ranks + tied / 2``: its expectation under a random order of the tie group.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    if tied is None:
        out = {}
        for k in (10, 20):
            hit = ranks <= k
            out[f"recall@{k}"] = hit.astype(np.float64)
            out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)
        out["mrr@10"] = np.where(ranks <= 10, 1.0 / ranks, 0.0)
        return {name: out[name] for name in METRICS}
    tied = np.asarray(tied, dtype=np.float64)
    first, last = ranks - tied / 2.0, ranks + tied / 2.0
    if not (np.array_equal(first, np.round(first)) and np.array_equal(tied, np.round(tied))):
        raise ValueError("ranks, tied: ranks must be the mean positions of whole-number tie groups")
    out = {}
    for name, gains in _GAINS.items():
        cumulative = np.concatenate([[0.0], np.cumsum(gains)])  # cumulative[r] = gains at ranks 1..r
        k = len(gains)
        upper = np.clip(last, 0, k).astype(np.int64)
        lower = np.clip(first - 1.0, 0, k).astype(np.int64)
        out[name] = (cumulative[upper] - cumulative[lower]) / (tied + 1.0)
    return out


# Each metric's gain at ranks 1..K (0 beyond K), in METRICS order.
_GAINS: dict[str, np.ndarray] = {
    "recall@10": np.ones(10),
    "recall@20": np.ones(20),
    "ndcg@10": 1.0 / np.log2(np.arange(2, 12)),
    "ndcg@20": 1.0 / np.log2(np.arange(2, 22)),
    "mrr@10": 1.0 / np.arange(1, 11),
}


@dataclass(frozen=True)
class EvalResult:
    """Evaluation of one stage.

    - ``metrics``: mean of each of :data:`METRICS` over the evaluated users.
    - ``per_user``: ``(n_users,) float64`` per metric, plus ``"rank"`` (the target's rank), aligned with
      ``users`` — pass two models' arrays to :func:`paired_bootstrap`.
    - ``users``: split positions evaluated; ``is_cold``: ``(n_users,) bool``, target never in training.
    - ``cold_metrics``: the same means over the cold users only, keys prefixed ``cold_`` (NaN if none), and
      ``cold_new_*`` (:data:`NEW_ITEM_METRICS`): the cold users' targets ranked among the items never seen in
      training only, how well a model ranks new items against each other (content kNN's home ground).
    - ``top_items``: ``(n_users, LIST_LENGTH) int64`` each user's best items among those ranked (the history
      excluded but the target), best first, ``-1`` past the rankable items (:func:`top_items`); aligned with
      ``users``. What :mod:`mmrec.beyond`'s coverage, Gini, intra-list diversity and novelty read.
    """

    stage: str
    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]
    users: np.ndarray
    is_cold: np.ndarray
    cold_metrics: dict[str, float]
    tie_rule: str
    top_items: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_cold_users(self) -> int:
        return int(self.is_cold.sum())

    def to_dict(self) -> dict[str, float | int | None]:
        """Flat JSON-ready dict: metrics, cold metrics (NaN -> None), ``n_users``, ``n_cold_users``."""
        flat: dict[str, float | int | None] = {}
        for key, value in {**self.metrics, **self.cold_metrics}.items():
            flat[key] = None if math.isnan(value) else value
        flat["n_users"] = self.n_users
        flat["n_cold_users"] = self.n_cold_users
        return flat


def _mean(values: dict[str, np.ndarray], mask: np.ndarray, prefix: str = "",
          names: tuple[str, ...] = METRICS) -> dict[str, float]:
    n = int(mask.sum())
    return {f"{prefix}{m}": float(values[m][mask].mean()) if n else float("nan") for m in names}


def evaluate(
    model: Ranker,
    data: Behaviour,
    stage: Stage = "test",
    *,
    batch_size: int = 256,
    users: np.ndarray | None = None,
    tie_rule: TieRule | str = TieRule.EXPECTED,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> EvalResult:
    """Rank every catalogue item for each user and score the ``stage`` target.

    Args:
        model: any :class:`Ranker`; it is switched to eval mode and called under ``torch.no_grad()``.
        data: the behaviour sequences of the split (``data.split``): the users' contexts are their last
            ``model.max_len`` events before the target (:meth:`~mmrec.data.behaviour.Behaviour.context`).
        stage: ``"valid"`` (context and history = train) or ``"test"`` (train + valid).
        batch_size: users per ``model.scores`` call.
        users: split positions to evaluate (default: all).
        tie_rule: see :class:`TieRule`.
        device: where contexts are sent and ranks computed (default: the model's device).
        progress: show a progress bar over user batches.

    Returns:
        :class:`EvalResult` with metrics over all evaluated users and over the cold ones, and each user's top
        :data:`LIST_LENGTH` items.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    tie_rule = TieRule(tie_rule)
    split = data.split
    rows = np.arange(split.n_users, dtype=np.int64) if users is None else np.asarray(users, dtype=np.int64)
    if rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= split.n_users)):
        raise ValueError(f"users: must be a 1-d array of split positions in [0, {split.n_users})")
    history = split.history(stage)  # once: building it copies every event
    targets = split.target(stage)
    n_items = split.n_items
    ranks, tied = np.empty(len(rows), dtype=np.float64), np.empty(len(rows), dtype=np.float64)
    new_ranks, new_tied = np.empty(len(rows), dtype=np.float64), np.empty(len(rows), dtype=np.float64)
    top = np.empty((len(rows), LIST_LENGTH), dtype=np.int64)
    device = _device_of(model) if device is None else torch.device(device)
    trained = torch.from_numpy(split.train_item_mask()).to(device)
    model.eval()
    starts = range(0, len(rows), batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc=f"evaluate {stage}", disable=not progress, leave=False):
            chunk = rows[start : start + batch_size]
            batch = data.context(stage, chunk, model.max_len).to(device)
            # exclude the whole history: one scatter over the flat CSR entries of this chunk
            hist = history.take(chunk)
            exclude = torch.zeros((len(chunk), n_items), dtype=torch.bool, device=device)
            exclude[torch.from_numpy(hist.row_of).to(device), torch.from_numpy(hist.item).to(device)] = True
            target = torch.from_numpy(targets[chunk]).to(device)
            # a target the user consumed before is ranked all the same, so the model must not mask it
            rankable = exclude.clone()
            rankable[torch.arange(len(chunk), device=device), target] = False
            scores = model.scores(batch, rankable)
            if scores.shape != (len(chunk), n_items):
                raise ValueError(
                    f"scores: returned shape {tuple(scores.shape)}, expected ({len(chunk)}, {n_items})"
                )
            batch_greater, batch_tied = tie_counts(scores.float(), target.to(scores.device), exclude.to(scores.device))
            tied[start : start + len(chunk)] = batch_tied.cpu().numpy()
            ranks[start : start + len(chunk)] = 1.0 + batch_greater.cpu().numpy()
            top[start : start + len(chunk)] = top_items(scores.float(), rankable.to(scores.device))
            # among new items only (what the cold users' rows are read for; other rows' targets are masked here)
            new_greater, new_tie = tie_counts(scores.float(), target.to(scores.device),
                                              (exclude | trained).to(scores.device))
            new_ranks[start : start + len(chunk)] = 1.0 + new_greater.cpu().numpy()
            new_tied[start : start + len(chunk)] = new_tie.cpu().numpy()
    if tie_rule is TieRule.EXPECTED:
        ranks += tied / 2.0
        new_ranks += new_tied / 2.0
        per_user, new_per_user = metrics_from_ranks(ranks, tied), metrics_from_ranks(new_ranks, new_tied)
    else:
        ranks += tied
        new_ranks += new_tied
        per_user, new_per_user = metrics_from_ranks(ranks), metrics_from_ranks(new_ranks)
    is_cold = ~split.train_item_mask()[targets[rows]]
    new_names = tuple(m.removeprefix("new_") for m in NEW_ITEM_METRICS)
    everyone = np.ones(len(rows), dtype=bool)
    return EvalResult(
        stage=stage,
        metrics=_mean(per_user, everyone),
        per_user={**per_user, "rank": ranks},
        users=rows,
        is_cold=is_cold,
        cold_metrics={**_mean(per_user, is_cold, prefix="cold_"),
                      **_mean(new_per_user, is_cold, prefix="cold_new_", names=new_names)},
        tie_rule=tie_rule.value,
        top_items=top,
    )


def _device_of(model) -> torch.device:
    tensor = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    if tensor is None and hasattr(model, "buffers"):
        tensor = next(iter(model.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


def format_metrics(results: dict) -> str:
    """A text table of ``{stage: metrics}`` (as :func:`mmrec.train.evaluate_store` returns): one row per stage and
    one for its cold users, where there are any."""
    lines = [f"{'':<12}" + "".join(f"{m:>11}" for m in METRICS) + f"{'users':>8}"]
    for stage, metrics in results.items():
        for prefix, label in (("", stage), ("cold_", f"{stage} cold")):
            value = metrics.get(f"{prefix}ndcg@10")
            if value is None or value != value:  # NaN: no cold users in this stage
                continue
            n = metrics["n_users"] if not prefix else metrics["n_cold_users"]
            lines.append(f"{label:<12}" + "".join(f"{metrics[prefix + m]:>11.4f}" for m in METRICS) + f"{n:>8}")
    return "\n".join(lines)


class BootstrapResult(NamedTuple):
    """Paired bootstrap of ``mean(a - b)``: the observed difference, a 95% interval, and ``P(a better)``."""

    mean_diff: float
    ci_low: float
    ci_high: float
    p_better: float


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n_resamples: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> BootstrapResult:
    """Paired bootstrap over users for per-user metric arrays ``a`` and ``b`` ``(U,)`` (same users, same order).

    Resamples users with replacement ``n_resamples`` times and returns the observed ``mean(a - b)``, the
    percentile interval at ``confidence``, and ``p_better``: the share of resamples where ``a``'s mean is above
    ``b``'s (a resample with exactly equal means counts one half). Vectorised in chunks of resamples.

    Example::

        diff, lo, hi, p = paired_bootstrap(sasrec.per_user["ndcg@10"], pop.per_user["ndcg@10"])
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) == 0:
        raise ValueError(f"a, b: must be non-empty 1-d arrays of equal length, got {a.shape} and {b.shape}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples: must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must be in (0, 1), got {confidence}")
    diff = a - b
    n = len(diff)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    chunk = max(1, 4_000_000 // n)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        means[start : start + size] = diff[rng.integers(0, n, size=(size, n))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    p_better = float(np.mean(means > 0) + 0.5 * np.mean(means == 0))
    return BootstrapResult(float(diff.mean()), float(low), float(high), p_better)
