"""Why an item is recommended: the user's past events that most raise its score, by leaving each one out.

The weight of event ``i`` for item ``c`` is ``logit(c | history) - logit(c | history without event i)``: how much
the scorer's logit drops when the user's interest is recomputed without that event. It is faithful by
construction (it *is* the effect of the event on this model's score) and computed in one batched pass: the ``L``
leave-one-out histories and the full one go through the GRU together in ``L`` steps, each joining where it leaves
the full history (:meth:`InterestModel.leave_one_out <mmrec.networks.interest.InterestModel.leave_one_out>`), then
the scorer scores every item for all ``L + 1`` interests. The history is what a recompute reads (the last ``max_len`` logged
events the model can read, as training and ``rebuild``); a user whose stored state was stepped past ``max_len``
events is explained by that window.

Text events (e.g. tags) come with the keyphrases of their text (spaCy entities and noun chunks,
:func:`mmrec.encoders.preprocess.extract_keyphrases`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..encoders.preprocess import extract_keyphrases
from ..folding import EventFolder, LogEvent
from ..networks.scorer import MLPScorer

__all__ = ["Reason", "explained_window", "leave_one_out", "reasons"]


@dataclass(frozen=True)
class Reason:
    """A past event of the user and how much it supports an item: ``weight`` is the drop in the item's logit when
    the event is left out of the history (positive: the event raises the score)."""

    item_id: str
    event: str
    timestamp: int
    weight: float
    text: str = ""
    keyphrases: tuple[str, ...] = ()


@torch.inference_mode()
def leave_one_out(folder: EventFolder, scorer: MLPScorer, window: list[LogEvent], previous: int | None,
                  vectors: torch.Tensor) -> torch.Tensor:
    """``(L, C)`` weights of the ``L`` events of ``window`` (time-ordered) for the items ``vectors (C, D)``: the
    logit with the whole window minus the logit without event ``i``. ``previous``: the timestamp before the window
    (:meth:`EventFolder.window`)."""
    n, network = len(window), folder.network
    history, table = folder.batch([window], [previous])  # (1, L)
    # row t >= 1: event t alone, its time gap counted from the event before t - 1 (left out). Texts are coded in
    # order of appearance, the same order as the history's: both batches read the history's text table.
    rejoined, _ = folder.batch([[e] for e in window], ([previous, previous] + [e[0] for e in window[: n - 2]])[:n])
    states = network.leave_one_out_states(history, rejoined, folder.item_vectors, table)  # (L + 1, H)
    interests = network.interest_model.interest(states)  # (L + 1, D)
    logits = scorer.logits(interests, vectors.expand(n + 1, *vectors.shape))  # (L + 1, C)
    return logits[0] - logits[1:]


def reasons(weights: torch.Tensor, window: list[LogEvent], top: int, keyphrases: bool = True
            ) -> list[list[Reason]]:
    """For each item (a column of ``weights (L, C)``), its ``top`` supporting events (positive weight), best
    first."""
    if not window:
        return [[] for _ in range(weights.shape[1])]
    values, rows = weights.T.topk(min(top, len(window)), dim=1)  # (C, top)
    picked = sorted({int(r) for r, v in zip(rows.flatten(), values.flatten()) if v > 0})
    texts = [window[r][3] for r in picked]
    phrases = dict(zip(picked, extract_keyphrases(texts) if keyphrases and any(texts) else [[] for _ in picked]))
    out = []
    for item_rows, item_values in zip(rows.tolist(), values.tolist()):
        out.append([Reason(window[r][1], window[r][2], int(window[r][0]), float(v), window[r][3],
                           tuple(phrases[r]) if window[r][3] else ())
                    for r, v in zip(item_rows, item_values) if v > 0])
    return out


def explained_window(folder: EventFolder, log: Sequence[tuple]) -> tuple[list[LogEvent], int | None]:
    """The window of a user's logged events ``(timestamp, item_id, event, text)`` that a recompute reads."""
    readable = [r for r in log if r[1] in folder.position and r[2] in folder.event_rank]
    return folder.window(folder.sorted(readable))
