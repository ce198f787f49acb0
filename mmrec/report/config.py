"""What the quality report trains and how: models, seeds, protocols and training options."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..baselines import BASELINES
from ..train.config import TrainConfig

__all__ = ["ID_ONLY", "OUR_VARIANTS", "PROTOCOLS", "QualityConfig", "is_ours"]

PROTOCOLS: tuple[str, ...] = ("standard", "cold")
OUR_VARIANTS: tuple[str, ...] = ("id", "text", "image", "text+image", "text+image+id")
ID_ONLY: tuple[str, ...] = ("pop", "bpr", "gru4rec", "sasrec", "id")
SIGNALS = frozenset({"text", "image", "id"})


def is_ours(model: str) -> bool:
    """Whether ``model`` names our model by its item signals: ``+``-joined ``text``, ``image``, ``id``."""
    parts = model.split("+")
    return bool(model) and set(parts) <= SIGNALS and len(set(parts)) == len(parts)


@dataclass(frozen=True)
class QualityConfig:
    """What the report trains and how.

    Attributes:
        models: baselines (:data:`mmrec.baselines.BASELINES`) and our model's variants, named by their item signals
            (``text``, ``image``, ``id`` joined by ``+``; default :data:`OUR_VARIANTS`).
        seeds: one run per model, protocol and seed; the cold protocol's held-out items are chosen by the seed too.
        protocols: subset of :data:`PROTOCOLS`.
        ours: the variant the win and the bootstrap are computed for.
        hold_out: share of rated items removed from training in the ``cold`` protocol.
        train: our model's training options (epochs, patience...); its ``seed`` is replaced per run. Patience 20:
            the content models' validation NDCG@10 plateaus for 10-20 epochs before it climbs again; on
            ml-latest-small it raised text + image + ID's mean validation NDCG@10 (seeds 0-2) from 0.0766 with
            patience 8 to 0.0835 (best epochs 45, 50, 90).
        baseline_epochs / baseline_patience: the baselines' early stopping (GRU4Rec plateaus for ~15 epochs).
        bootstrap_resamples: paired bootstrap over test users.
        threads: torch CPU threads (``None``: torch's default; with ``jobs`` > 1, the CPU's cores shared out
            among the workers).
        jobs: runs trained at once, each in its own worker process. One run of these models uses a small part of
            a GPU (the README table's 21 standard-protocol runs ran side by side on one H100 in 7 minutes); on a
            CPU the workers share its cores. Results do not depend on it beyond floating-point rounding: a CPU
            run repeats bit for bit at the same thread count, in a worker or not.
            Workers are started by spawning, so a script that calls :func:`run_report` with ``jobs`` > 1 needs the
            usual ``if __name__ == "__main__":`` guard.
        device: where every model trains and is evaluated (``"auto"``: CUDA when available).
        exposure_ratio: in the cold protocol, our model is also evaluated with no exposure target, with the
            new-item lift recalibrated on validation for this cold/warm Recall@20 ratio and with new-item places
            chosen for it, each skipped where it is how ``train`` ranks new items anyway (0: none of these).
    """

    models: tuple[str, ...] = (*BASELINES, *OUR_VARIANTS)
    seeds: tuple[int, ...] = (0, 1, 2)
    protocols: tuple[str, ...] = PROTOCOLS
    ours: str = "text+image+id"
    hold_out: float = 0.1
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=120, patience=20, show_progress=False))
    baseline_epochs: int = 200
    baseline_patience: int = 30
    bootstrap_resamples: int = 10_000
    threads: int | None = None
    jobs: int = 1
    device: str = "auto"
    exposure_ratio: float = 0.5

    def __post_init__(self) -> None:
        unknown = [m for m in (*self.models, self.ours) if m not in BASELINES and not is_ours(m)]
        if unknown:
            raise ValueError(f"models: unknown {unknown}; choose from {list(BASELINES)} or our model's item signals "
                             f"joined by '+', e.g. {list(OUR_VARIANTS)}")
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad:
            raise ValueError(f"protocols: unknown {bad}; choose from {list(PROTOCOLS)}")
        if not self.seeds:
            raise ValueError("seeds: need at least one seed")
        if not 0.0 < self.hold_out < 1.0:
            raise ValueError(f"hold_out: must be in (0, 1), got {self.hold_out}")
        if self.exposure_ratio < 0:
            raise ValueError(f"exposure_ratio: must be >= 0, got {self.exposure_ratio}")
        if self.jobs < 1 or (self.threads is not None and self.threads < 1):
            raise ValueError(f"jobs and threads: must be >= 1, got jobs={self.jobs}, threads={self.threads}")
