"""Training settings: how our model is trained (the network's own settings are :class:`ModelConfig`'s)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..networks.model import ModelConfig

__all__ = ["EXPOSURES", "TrainConfig"]

EXPOSURES = ("lift", "slots")
"""Ways of giving new items exposure (``TrainConfig.new_item_exposure``)."""


@dataclass(frozen=True)
class TrainConfig:
    """Attributes:
        epochs: maximum epochs; training stops earlier when validation NDCG@10 has not improved for ``patience``.
        batch_size: training windows per step. Windows are ``model.max_len`` events long (the model's setting:
            evaluation and serving read as many).
        stride: a new window starts every ``stride`` events, so the first targets of a window still see
            ``max_len - stride`` events of context (default ``max_len // 2``: on ml-latest-small it reached a better
            validation NDCG@10 in less time than windows without overlap).
        learning_rate, weight_decay: AdamW.  seed: makes CPU runs reproducible.
        ema_decay: validation and the saved model use an exponential moving average of the weights, updated
            after every step with this decay (0 = the raw weights). Averaging smooths the step-to-step noise
            that makes single-epoch validation scores jump, so early stopping picks a model that generalises
            rather than a lucky epoch.
        device: ``"auto"`` (CUDA when available), ``"cpu"``...
        new_item_recall_ratio: the exposure new items (items not seen in training) get: after training, how
            they are ranked is chosen on validation so that the Recall@20 of users whose target is a new item
            reaches this fraction of the other users' Recall@20 (default 0.5), the way ``new_item_exposure`` says.
            Recommending items nobody has interacted with yet costs the others some recall; ``0`` sets no target:
            new items are lifted as far as validation NDCG@10 says (see ``new_item_bias_grid``), which on
            ml-latest-small is hardly at all, so they are almost never recommended.
        new_item_exposure: how ``new_item_recall_ratio`` is reached. ``"slots"`` (default): no lift, and the fewest
            of the last places of each top ``model.new_item_slot_depth`` (20) reserved for the best new items
            (:func:`mmrec.train.calibration.calibrate_new_item_slots`); trained items keep their order above
            them, so wherever new items rarely reached the top, NDCG@10 does not move. ``"lift"``: new items' scores are lifted by the smallest
            multiple of the scores' standard deviation that reaches the ratio, to an eighth of a grid step (the
            multiple with the highest ratio when none does); lifted items land among the first places too.
        new_item_bias_grid: the lifts (multiples of the scores' standard deviation) tried for new items, by NDCG@10
            when ``new_item_recall_ratio`` is 0, and as the start of the search with ``new_item_exposure="lift"``
            (empty: no lift; how new items are built is still chosen).
        new_item_neighbours: after training, new items built from the vectors of this many trained items with the
            nearest texts are tried beside new items built from their own content, and kept when they validate
            better (see :func:`mmrec.train.calibration.calibrate_new_item_bias`); 0: never tried.
        model: the network (see :class:`~mmrec.networks.model.ModelConfig`), ``max_len`` included.
    """

    epochs: int = 30
    batch_size: int = 128
    stride: int | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    ema_decay: float = 0.98
    patience: int = 3
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 256
    show_progress: bool | None = None
    new_item_bias_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    new_item_recall_ratio: float = 0.5
    new_item_neighbours: int = 20
    new_item_exposure: str = "slots"
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.new_item_neighbours < 0:
            raise ValueError(f"new_item_neighbours must be >= 0, got {self.new_item_neighbours}")
        if self.new_item_recall_ratio < 0:
            raise ValueError(f"new_item_recall_ratio must be >= 0, got {self.new_item_recall_ratio}")
        if self.new_item_exposure not in EXPOSURES:
            raise ValueError(f"new_item_exposure must be one of {EXPOSURES}, got {self.new_item_exposure!r}")
        if self.stride is not None and not 1 <= self.stride <= self.model.max_len:
            raise ValueError(f"stride must be in [1, model.max_len={self.model.max_len}], got {self.stride}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

