"""Diversity by maximal marginal relevance (Carbonell & Goldstein, SIGIR 1998) over the model's item vectors.

From a pool of candidates ranked by relevance, the list is built greedily: each place goes to the candidate with
the best ``(1 - lam) * relevance - lam * max_similarity_to_the_items_already_chosen``. ``lam = 0`` is the relevance
order itself; ``lam = 1`` chooses (after the list's own first item) the item least similar to those above it.
Relevance is the scorer's probability (in [0, 1]); similarity is the cosine of item vectors (in [-1, 1]) taken
around the catalogue's mean vector: the model's item vectors share a strong common direction (its fusion ends in
a LayerNorm), so raw cosines are all close to 1 and would barely tell items apart.
"""

from __future__ import annotations

import torch

__all__ = ["POOL_FACTOR", "mmr", "intra_list_diversity"]

#: candidates considered per place: ``k`` places choose from the ``POOL_FACTOR * k`` most relevant items
POOL_FACTOR = 5


@torch.inference_mode()
def mmr(relevance: torch.Tensor, vectors: torch.Tensor, k: int, lam: float, center: torch.Tensor | None = None
        ) -> torch.Tensor:
    """Positions ``(min(k, P),)`` into a pool of ``P`` candidates in the model's order (``relevance (P,)``,
    ``vectors (P, D)``), in the order maximal marginal relevance places them; the pool's first stays first.
    ``center (D,)``: subtracted from the vectors before their cosines (the catalogue's mean vector)."""
    n = min(k, len(relevance))
    if lam == 0 or n == 0:
        return torch.arange(n)
    unit = torch.nn.functional.normalize(vectors.float() - (0 if center is None else center.float()), dim=1)
    chosen = [0]
    closest = unit @ unit[chosen[0]]  # (P,) each candidate's highest similarity to the chosen items
    taken = torch.zeros(len(relevance), dtype=torch.bool)
    taken[chosen[0]] = True
    for _ in range(n - 1):
        gain = ((1 - lam) * relevance - lam * closest).masked_fill(taken, float("-inf"))
        pick = int(gain.argmax())
        chosen.append(pick)
        taken[pick] = True
        closest = torch.maximum(closest, unit @ unit[pick])
    return torch.tensor(chosen)


def intra_list_diversity(vectors: torch.Tensor) -> float:
    """Mean pairwise cosine distance ``1 - cos`` of a list's item vectors ``(k, D)`` (0 for fewer than 2)."""
    if len(vectors) < 2:
        return 0.0
    unit = torch.nn.functional.normalize(vectors.float(), dim=1)
    sim = unit @ unit.T
    k = len(vectors)
    return float((1 - sim).sum() / (k * (k - 1)))
