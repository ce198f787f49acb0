"""The one batch type every model trains and scores on, the windows it is cut from, and time-gap buckets.

Our model and the ID-only baselines read the same :class:`SequenceBatch`: right-padded event windows with item,
event, time-gap and event-text indices. Training windows come from :meth:`mmrec.data.behaviour.Behaviour.windows`
(our model: the merged behaviour, every interaction a target, the first one predicted from the initial state) or
:func:`training_windows` (the baselines: interactions only, each user's first event never a target); evaluation
contexts from :meth:`mmrec.data.behaviour.Behaviour.context` for every model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .split import Split

__all__ = ["N_GAP_BUCKETS", "NO_TEXT", "SequenceBatch", "Windows", "gap_buckets", "training_windows"]

NO_TEXT = -1
"""Text index of an event without text (and of padding)."""
N_GAP_BUCKETS = 28
"""Time-gap buckets by default: log2-spaced up to ~8 years (see :func:`gap_buckets`)."""


def gap_buckets(gaps_seconds: np.ndarray | torch.Tensor, n_buckets: int) -> np.ndarray | torch.Tensor:
    """Log2-spaced buckets of the time since the previous event: 0 s -> 0, 1 s -> 1, ~1 h -> 12, ~1 y -> 25.

    Negative gaps (clock skew) count as 0; the last bucket absorbs everything longer.
    """
    if isinstance(gaps_seconds, torch.Tensor):
        g = gaps_seconds.clamp(min=0).double()
        return torch.floor(torch.log2(g + 1)).long().clamp(max=n_buckets - 1)
    g = np.maximum(np.asarray(gaps_seconds, dtype=np.float64), 0)
    return np.minimum(np.floor(np.log2(g + 1)).astype(np.int64), n_buckets - 1)


@dataclass
class SequenceBatch:
    """Right-padded event windows (``B`` rows, ``L`` positions); position ``j < lengths[b]`` is real.

    - ``items (B, L) int64``: item indices, padding ``n_items`` (one past the catalogue).
    - ``events (B, L)``: event indices; ``gaps (B, L)``: time-gap buckets (time since the user's previous event,
      0 for a user's first); ``texts (B, L)``: rows of the event-text table, ``-1`` for events without text. All
      three pad with ``0``, ``0``, ``-1``.
    - ``lengths (B,)``: real positions (0 in a context of a user with no events before the target yet).
    - ``users (B,)``: split positions of the rows' users.
    - ``targets (B, L + 1) | None``: training only. Column 0 is the item predicted before the window's first
      event (from the initial state), column ``j + 1`` the item predicted after position ``j``; ``n_items`` where
      there is no target.

    Example (a model that reads the last real position)::

        last = batch.items.gather(1, (batch.lengths - 1)[:, None])    # (B, 1)
    """

    items: torch.Tensor
    events: torch.Tensor
    gaps: torch.Tensor
    texts: torch.Tensor
    lengths: torch.Tensor
    users: torch.Tensor
    n_items: int
    targets: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.items.shape[0])

    @property
    def width(self) -> int:
        """``L``, the padded width."""
        return int(self.items.shape[1])

    @property
    def mask(self) -> torch.Tensor:
        """``(B, L) bool``: real (non-padding) positions."""
        return torch.arange(self.width, device=self.items.device)[None, :] < self.lengths[:, None]

    @property
    def next_targets(self) -> torch.Tensor:
        """``(B, L)``: the item predicted after each position (``targets`` without column 0)."""
        if self.targets is None:
            raise ValueError("targets: this batch has no targets (an evaluation context)")
        return self.targets[:, 1:]

    def to(self, device: torch.device | str) -> SequenceBatch:
        """The batch with every tensor moved to ``device``."""
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}
        return SequenceBatch(**moved)

    def padded(self, width: int) -> SequenceBatch:
        """The batch right-padded (or cut at the right, past every row's length) to ``width`` positions."""
        extra = width - self.width
        if extra < 0 and len(self.lengths) and int(self.lengths.max()) > width:
            raise ValueError(f"width: {width} is shorter than the longest row")
        if extra == 0:
            return self

        def pad(t: torch.Tensor, value: int) -> torch.Tensor:
            if extra < 0:
                return t[:, :width]
            return torch.cat([t, t.new_full((t.shape[0], extra), value)], dim=1)

        return SequenceBatch(items=pad(self.items, self.n_items), events=pad(self.events, 0),
                             gaps=pad(self.gaps, 0), texts=pad(self.texts, NO_TEXT), lengths=self.lengths,
                             users=self.users, n_items=self.n_items, targets=self.targets)


@dataclass(frozen=True)
class Windows:
    """Training windows, built once per fit: ``arrays`` ``items``/``events``/``gaps``/``texts`` of ``(W, L)``,
    ``lengths``/``users`` ``(W,)``, ``targets (W, L + 1)`` (padding ``n_items``), as :class:`SequenceBatch` reads
    them."""

    arrays: dict[str, np.ndarray]
    lengths: np.ndarray
    users: np.ndarray
    targets: np.ndarray
    n_items: int

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def n_targets(self) -> int:
        """Number of prediction targets over all windows."""
        return int((self.targets != self.n_items).sum())

    def batch(self, index: np.ndarray) -> SequenceBatch:
        """Windows ``index`` as a :class:`SequenceBatch` (targets included)."""
        return SequenceBatch(
            **{k: torch.from_numpy(v[index]) for k, v in self.arrays.items()},
            lengths=torch.from_numpy(self.lengths[index]), users=torch.from_numpy(self.users[index]),
            n_items=self.n_items, targets=torch.from_numpy(self.targets[index]),
        )

    def batches(self, batch_size: int, rng: np.random.Generator | None = None, drop_last: bool = False
                ) -> Iterator[SequenceBatch]:
        """Yield batches of ``batch_size`` windows, shuffled with ``rng`` (in order when ``rng`` is None)."""
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        order = np.arange(len(self)) if rng is None else rng.permutation(len(self))
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            yield self.batch(order[start : start + batch_size])


def training_windows(split: Split, max_len: int = 50, stride: int | None = None,
                     n_gap_buckets: int = N_GAP_BUCKETS) -> Windows:
    """Cut each user's training interactions into next-item windows of at most ``max_len`` positions (the
    baselines' windows).

    A user with training items ``s_0..s_{n-1}`` gives inputs ``s_0..s_{n-2}`` with targets ``s_1..s_{n-1}``
    (``targets[:, 0]`` is never a target here: ID-only models have no initial-state prediction). Windows are cut
    from the end, so the most recent window is full and ends at the last training event; an earlier window ends
    ``stride`` positions before the next one. ``stride`` defaults to ``max_len`` (consecutive, non-overlapping
    windows); a smaller stride gives overlapping windows, i.e. more context, where only each window's last
    ``stride`` positions are targets. Either way every training position but the first is a prediction target
    exactly once. Vectorised, no per-user Python loop.

    Returns:
        :class:`Windows` with arrays ``(W, max_len)`` and targets ``(W, max_len + 1)``.
    """
    if max_len < 1:
        raise ValueError(f"max_len: must be >= 1, got {max_len}")
    stride = max_len if stride is None else stride
    if not 1 <= stride <= max_len:
        raise ValueError(f"stride: must be in [1, max_len={max_len}], got {stride}")
    train = split.train
    m = np.maximum(train.lengths - 1, 0)  # (U,) prediction positions per user
    per_user = -(-m // stride)  # ceil
    n_windows = int(per_user.sum())
    user = np.repeat(np.arange(split.n_users, dtype=np.int64), per_user)
    first = np.zeros(split.n_users + 1, dtype=np.int64)
    np.cumsum(per_user, out=first[1:])
    k = np.arange(n_windows, dtype=np.int64) - first[user]  # 0 = most recent window
    end = m[user] - k * stride  # exclusive end of the input positions
    begin = np.maximum(end - max_len, 0)
    target_from = np.maximum(end - stride, 0) - begin  # first window column that is a target
    lengths = end - begin
    col = np.arange(max_len, dtype=np.int64)[None, :]
    real = col < lengths[:, None]
    is_target = real & (col >= target_from[:, None])
    n_items = split.n_items
    pad = len(train.item)  # index of a sentinel appended after the last event
    src = np.where(real, train.offsets[user][:, None] + begin[:, None] + col, pad)
    tgt = np.where(is_target, src + 1, pad)
    item_src = np.append(train.item, n_items)
    first_of_user = np.zeros(len(train.item), dtype=bool)
    first_of_user[train.offsets[:-1][train.offsets[:-1] < len(train.item)]] = True
    gaps = gap_buckets(np.where(first_of_user, 0, train.timestamp - np.concatenate([[0], train.timestamp[:-1]])),
                       n_gap_buckets)
    targets = np.full((n_windows, max_len + 1), n_items, dtype=np.int64)
    targets[:, 1:] = item_src[tgt]
    return Windows(
        arrays={"items": item_src[src], "events": np.append(train.event, 0)[src],
                "gaps": np.append(gaps, 0)[src], "texts": np.full(src.shape, NO_TEXT, dtype=np.int64)},
        lengths=lengths, users=user, targets=targets, n_items=n_items,
    )
