"""The multimodal sequential recommender: fusion -> item vectors -> GRU interests -> MLP scorer.

It implements the contract every model in mmrec shares (RecBole's idea, see :mod:`mmrec.baselines.base`):
``loss(batch)`` for training and ``scores(batch, exclude)`` over the whole catalogue, on
:class:`mmrec.data.SequenceBatch`, once :meth:`MultimodalRecommender.bind` has given it the catalogue's item
features. ``item_vectors`` and ``states`` serve real-time interest updates. Files: :mod:`mmrec.trained`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batch import SequenceBatch
from ..features import ItemFeatures
from ..fusion import FusionConfig, ItemFusion
from .interest import InterestConfig, InterestModel
from .scorer import MLPScorer, ScorerConfig

__all__ = ["ModelConfig", "MultimodalRecommender", "NewItemPolicy"]


# Similarities computed at once when new items look for their nearest trained items (64 MiB of float32).
_SIMILARITY_BLOCK = 1 << 24

# Keys of the new-item policy inside saved model configs from before it was kept apart from the settings.
_POLICY_KEYS = {"new_item_bias": "bias", "new_item_logit_bias": "logit_bias", "new_item_text_only": "text_only",
                "new_item_neighbours": "neighbours", "new_item_slots": "slots"}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network. ``use_text``/``use_image``/``use_id`` select the item signals
    (ID only = a GRU4Rec-equivalent baseline); ``max_len`` is how many recent events the GRU reads, in training
    windows, evaluation contexts and served users alike. Loss weights balance next-item cross-entropy (full
    softmax over the items seen in training), the re-ranker's loss (on ``scorer_targets`` sampled targets, with
    ``scorer_negatives`` random negatives each), the fusion's contrastive alignment and the cold-item loss: on
    ``cold_batch`` random trained items, the content-only vector (ID hidden) regresses onto the item's full vector,
    so an item never seen in training lands where a trained item with that content would, not in a region the
    interests never point at. ``new_item_neighbour_temperature`` and ``new_item_slot_depth`` shape the ways of
    ranking new items that training may choose (:class:`NewItemPolicy`). Training sizes the fusion, interest and
    scorer configs from the data (``n_items``, feature widths, events)."""

    fusion: FusionConfig = field(default_factory=FusionConfig)
    interest: InterestConfig = field(default_factory=InterestConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    use_text: bool = True
    use_image: bool = True
    use_id: bool = True
    max_len: int = 50
    scorer_weight: float = 0.2
    alignment_weight: float = 0.1
    cold_weight: float = 1.0
    scorer_negatives: int = 8
    scorer_targets: int = 512
    alignment_batch: int = 512
    cold_batch: int = 2048
    new_item_neighbour_temperature: float = 0.05
    new_item_slot_depth: int = 20

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {self.max_len}")
        if self.new_item_slot_depth < 1:
            raise ValueError(f"new_item_slot_depth must be >= 1, got {self.new_item_slot_depth}")
        if self.new_item_neighbour_temperature <= 0:
            raise ValueError(f"new_item_neighbour_temperature must be > 0, got {self.new_item_neighbour_temperature}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """The config of :meth:`to_dict`; keys of the new-item policy that older saves kept here are ignored (see
        :meth:`NewItemPolicy.from_dict`)."""
        data = {k: v for k, v in data.items() if k not in _POLICY_KEYS}
        return cls(
            fusion=FusionConfig(**data.pop("fusion")),
            interest=InterestConfig(**data.pop("interest")),
            scorer=ScorerConfig(**data.pop("scorer")),
            **data,
        )


@dataclass(frozen=True)
class NewItemPolicy:
    """How items not seen in training are built and ranked: learned state, chosen on validation after training
    (:mod:`mmrec.train.calibration`) and saved with the trained model, never a setting.

    - ``bias`` / ``logit_bias``: added to the retrieval score / the re-ranker's logit of every such item: neither
      stage ever ranked them against trained ones, so their scores are not on the same scale.
    - ``text_only``: such an item that has a text is built from the text alone, its image ignored (on
      ml-latest-small's cold protocol posters made new items' vectors rank them far worse among themselves).
    - ``neighbours`` > 0: such an item with a text takes the vectors of the trained items whose texts are nearest
      its own instead (see :meth:`MultimodalRecommender.neighbour_vectors`).
    - ``slots`` > 0: in every ranking the last ``slots`` places of the first ``ModelConfig.new_item_slot_depth``
      go to the best-scored new items (see :meth:`MultimodalRecommender.place_new_items`).
    """

    bias: float = 0.0
    logit_bias: float = 0.0
    text_only: bool = False
    neighbours: int = 0
    slots: int = 0

    def __post_init__(self) -> None:
        if self.neighbours < 0 or self.slots < 0:
            raise ValueError(f"neighbours and slots must be >= 0, got {self.neighbours} and {self.slots}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> NewItemPolicy:
        """A policy from :meth:`to_dict`, or from a saved model config of older saves (``new_item_*`` keys)."""
        if any(k in data for k in _POLICY_KEYS):
            data = {_POLICY_KEYS[k]: v for k, v in data.items() if k in _POLICY_KEYS}
        return cls(**data)


class MultimodalRecommender(nn.Module):
    """Fusion + interest GRU + scorer.

    Shapes: ``item_vectors() -> (N, D)``; ``interests(batch, V) -> (B, D)`` for the state after each row's last
    event; ``scores(batch, exclude) -> (B, N)``; ``loss(batch) -> ()`` with its parts in ``loss_parts``.
    ``new_items`` is the :class:`NewItemPolicy` in force (no lift, nothing reserved until training chooses one).

    Example::

        model = MultimodalRecommender(config).bind(features, text_table)
        loss = model.loss(batch)                   # batch: SequenceBatch with targets (B, L + 1)
        scores = model.eval().scores(context)      # (B, N)
    """

    def __init__(self, config: ModelConfig, new_items: NewItemPolicy | None = None) -> None:
        super().__init__()
        self.config = config
        if not (config.use_text or config.use_image or config.use_id):
            raise ValueError("ModelConfig: at least one of use_text, use_image, use_id must be True")
        self.fusion = ItemFusion(config.fusion)
        self.interest_model = InterestModel(config.interest)
        self.scorer = MLPScorer(config.scorer)
        self.new_items = new_items or NewItemPolicy()
        self.features: ItemFeatures | None = None
        self.text_table: torch.Tensor | None = None
        self.loss_parts: dict[str, float] = {}

    @property
    def max_len(self) -> int:
        """Events of history read per user (``ModelConfig.max_len``)."""
        return self.config.max_len

    def bind(self, features: ItemFeatures, text_table: torch.Tensor | None = None) -> MultimodalRecommender:
        """Give the model the catalogue it ranks: item ``features`` (``N`` items) and the event-text vectors
        ``text_table (T, text_dim)`` that batches' ``texts`` index, both on the model's device. Not saved with the
        weights: a served model binds the store's current items. Returns the model."""
        self.features, self.text_table = features, text_table
        return self

    def _bound(self) -> ItemFeatures:
        if self.features is None:
            raise RuntimeError("MultimodalRecommender: call bind(features, text_table) before loss or scores")
        return self.features

    # -- items -------------------------------------------------------------------------------------------------
    def item_vectors(self, features: ItemFeatures | None = None) -> torch.Tensor:
        """``(N, D)`` fused vectors of ``features`` (default: the bound catalogue)."""
        c = self.config
        features = self._bound() if features is None else features
        present = features.present.clone()
        present[:, 0] &= c.use_text
        present[:, 1] &= c.use_image
        if self.new_items.text_only and not self.training:  # training's content-only vectors keep every modality
            present[:, 1] &= features.known | ~present[:, 0]
        vectors = self.fusion(
            _at_width(features.text, c.fusion.text_dim, "text") if c.use_text else None,
            _at_width(features.image, c.fusion.image_dim, "image") if c.use_image else None,
            present,
            features.id_index if c.use_id else None,
            features.known if c.use_id else None,
        )
        if self.new_items.neighbours and c.use_text and not self.training:
            vectors = self.neighbour_vectors(features, vectors)
        return vectors

    def neighbour_vectors(self, features: ItemFeatures, vectors: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` ``vectors`` where every item not seen in training that has a text takes the softmax-weighted
        (``config.new_item_neighbour_temperature`` over cosine similarity) mean of the vectors of the
        ``new_items.neighbours`` trained items with the most similar text encoder features, scaled to the
        trained items' mean vector norm.

        Why: a trained item's vector carries what its users did with it, a new item's content-only vector only
        what the fusion learned to guess from content. On ml-latest-small's cold protocol it ranked cold
        validation users' items better among new items for some seeds and worse for others, so training tries it
        beside the content and keeps what validates better. A mean of vectors pointing different ways is shorter
        than they are, hence the rescaling to the trained vectors' mean norm."""
        c = self.config
        new = torch.nonzero(~features.known & features.present[:, 0]).squeeze(1)
        source = torch.nonzero(features.known & features.present[:, 0]).squeeze(1)
        if len(new) == 0 or len(source) == 0:
            return vectors
        text = F.normalize(features.text, dim=1)
        source_text, source_vectors = text[source], vectors[source]
        k = min(self.new_items.neighbours, len(source))
        scale = source_vectors.norm(dim=1).mean()
        out = vectors.clone()
        # (chunk, sources) similarities at a time: a large catalogue's full matrix would not fit in memory
        chunk = max(1, _SIMILARITY_BLOCK // len(source))
        for start in range(0, len(new), chunk):
            rows = new[start : start + chunk]
            nearest = (text[rows] @ source_text.T).topk(k, dim=1)  # (R, k)
            weights = torch.softmax(nearest.values / c.new_item_neighbour_temperature, dim=1)
            mean = (weights.unsqueeze(-1) * source_vectors[nearest.indices]).sum(1)  # (R, D)
            out[rows] = F.normalize(mean, dim=1) * scale
        return out

    # -- users -------------------------------------------------------------------------------------------------
    def step_inputs(self, vectors: torch.Tensor, items, events, gaps, texts, text_table=None) -> torch.Tensor:
        """GRU inputs ``(..., D)`` for events given by item/event/gap/text indices ``(...)``.

        ``vectors (N, D)`` are the item vectors (index ``N`` = padding); ``texts`` index rows of ``text_table
        (T, text_dim)``, -1 for events without text."""
        # padding reads row N-1 and is zeroed: no (N + 1, D) padded copy of the catalogue per call
        n = vectors.shape[0]
        real = (items < n).unsqueeze(-1).to(vectors.dtype)
        event_vectors = vectors[items.clamp(max=n - 1)] * real
        text = has_text = None
        if self.interest_model.text_proj is not None and text_table is not None and len(text_table):
            has_text = texts >= 0
            text = text_table[texts.clamp(min=0)]
        return self.interest_model.event_inputs(event_vectors, events, gaps, text, has_text)

    def states(self, batch: SequenceBatch, vectors: torch.Tensor, state: torch.Tensor | None = None,
               text_table: torch.Tensor | None = None):
        """GRU states ``(B, L, H)`` and last states ``(B, H)``, starting from ``state (B, H)`` (default: the
        learned initial state); rows with no events keep their starting state."""
        b = batch.lengths.shape[0]
        start = self.interest_model.initial(b) if state is None else state
        inputs = self.step_inputs(vectors, batch.items, batch.events, batch.gaps, batch.texts, text_table)
        lengths = batch.lengths.clamp(min=1)
        out, last = self.interest_model(inputs, lengths, start)
        empty = batch.lengths == 0
        if empty.any():
            last = torch.where(empty[:, None], start, last)
            out = out.masked_fill(empty[:, None, None], 0.0)
        return out, last

    def leave_one_out_states(self, history: SequenceBatch, rejoined: SequenceBatch, vectors: torch.Tensor,
                             text_table: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`InterestModel.leave_one_out` from the initial state, ``(L + 1, H)``: ``history`` is one row of
        ``L`` events, ``rejoined`` ``L`` rows of one event, row ``t >= 1`` event ``t`` with its time gap measured
        without event ``t - 1`` (row 0 is not read); both index ``text_table``."""
        def inputs(b: SequenceBatch) -> torch.Tensor:
            return self.step_inputs(vectors, b.items, b.events, b.gaps, b.texts, text_table)

        n = int(history.lengths[0])
        return self.interest_model.leave_one_out(inputs(history)[0, :n], inputs(rejoined)[1:n, 0],
                                                 self.interest_model.initial(1))

    def interests(self, batch: SequenceBatch, vectors: torch.Tensor, text_table: torch.Tensor | None = None):
        """``(B, D)`` interest vectors after each row's events (from the initial state)."""
        _, last = self.states(batch, vectors, text_table=text_table)
        return self.interest_model.interest(last)

    # -- scoring -----------------------------------------------------------------------------------------------
    def rerank(self, interest: torch.Tensor, vectors: torch.Tensor, dot: torch.Tensor,
               new_items: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``(B, N)`` where the top ``rerank`` items by dot product are ordered by the MLP and placed above
        every other item; the rest keep their dot-product order. ``new_items (N,)`` bool: items whose logits get
        the policy's ``logit_bias``."""
        k = min(self.config.scorer.rerank, dot.shape[1])
        if k == 0:
            return dot
        top = dot.topk(k, dim=1).indices  # (B, k)
        logits = self.scorer.logits(interest, vectors[top])
        if new_items is not None and self.new_items.logit_bias:
            logits = logits + self.new_items.logit_bias * new_items[top].to(logits.dtype)
        offset = dot.max() - logits.min() + 1.0
        candidates = dot.gather(1, top)
        # with fewer rankable items than `rerank`, masked (-inf) items are among the top k: they stay masked
        return dot.scatter(1, top, torch.where(candidates == float("-inf"), candidates, logits + offset))

    def scores(self, batch: SequenceBatch, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, N)`` ranking scores over every bound item; ``exclude (B, N)`` bool masks items before re-ranking so
        the MLP spends its candidates on rankable items. Items not seen in training are ranked by the
        :class:`NewItemPolicy`: their retrieval scores get its ``bias``, their logits its ``logit_bias``, and its
        ``slots`` places are theirs."""
        features = self._bound()
        vectors = self.item_vectors(features)
        new_items = ~features.known
        interest = self.interests(batch, vectors, self.text_table)
        dot = interest @ vectors.T
        if self.new_items.bias:
            dot = dot + self.new_items.bias * new_items.to(dot.dtype)
        if exclude is not None:
            dot = dot.masked_fill(exclude, float("-inf"))
        return self.place_new_items(self.rerank(interest, vectors, dot, new_items), new_items)

    def place_new_items(self, scores: torch.Tensor, new_items: torch.Tensor | None, slots: int | None = None,
                        depth: int | None = None) -> torch.Tensor:
        """``(B, N)`` scores reordered so that in every row places ``1 .. depth - slots`` hold the best trained items
        and the next ``slots`` places the best new items (``new_items (N,)`` bool), by ``scores``; every other item
        follows in its own order, and ``-inf`` (excluded) stays ``-inf``. A row with too few rankable new (trained)
        items fills the rest of the ``depth`` places with trained (new) ones in their order. ``slots``, ``depth``:
        by default the policy's ``slots`` and the config's ``new_item_slot_depth``; 0 slots or no new items returns
        ``scores`` unchanged. Ties are broken by ``topk``'s order: a model that scores every new item the same (ID
        only) fills its places with arbitrary ones.

        Why places at the end of the list: trained items keep their order and new items leave the first
        ``depth - slots`` places, so wherever new items rarely reach the top anyway NDCG@10 barely moves, and every
        list holds new items, where an additive lift lets them in wherever their lifted score lands."""
        slots = self.new_items.slots if slots is None else slots
        depth = self.config.new_item_slot_depth if depth is None else depth
        if not slots or new_items is None or not bool(new_items.any()):
            return scores
        n = scores.shape[1]
        trained_best = scores.masked_fill(new_items, float("-inf")).topk(min(depth - slots, n), dim=1)
        new_best = scores.masked_fill(~new_items, float("-inf")).topk(min(slots, n), dim=1)
        finite = scores[torch.isfinite(scores)]
        top = (finite.max() if len(finite) else scores.new_zeros(())) + 1.0
        placed = scores.clone()
        # places 1.. get top + depth, top + depth - 1, ...: above every other item, in order. A -inf pick is an
        # excluded item or one of the other kind topk took to fill up: it keeps the value it has.
        for best, first in ((trained_best, depth), (new_best, slots)):
            ranks = torch.arange(best.indices.shape[1], device=scores.device, dtype=scores.dtype)
            kept = placed.gather(1, best.indices)
            placed.scatter_(1, best.indices, torch.where(torch.isfinite(best.values), top + first - ranks, kept))
        return placed

    # -- training ----------------------------------------------------------------------------------------------
    def loss(self, batch: SequenceBatch) -> torch.Tensor:
        """Next-item cross-entropy over every item seen in training (full softmax) + the re-ranker's loss +
        text-image alignment + the cold-item loss; each part's value is left in ``loss_parts``."""
        c = self.config
        features = self._bound()
        vectors = self.item_vectors(features)  # (N, D)
        out, _ = self.states(batch, vectors, text_table=self.text_table)
        b = out.shape[0]
        start = self.interest_model.initial(b).unsqueeze(1)
        all_states = torch.cat([start, out], dim=1)  # (B, L+1, H): column j predicts targets[:, j]
        mask = batch.targets != len(features)
        interest = self.interest_model.interest(all_states[mask])  # (M, D)
        target = batch.targets[mask]
        # Only items seen in training compete in the softmax: an item that never occurs as a target would
        # otherwise be pushed down as a negative at every step, and new items would start out buried.
        logits = (interest @ vectors.T).masked_fill(~features.known, float("-inf"))  # (M, N)
        next_item = F.cross_entropy(logits, target)
        parts = {"next_item": next_item.item()}
        total = next_item
        if c.scorer_weight > 0:
            scorer = self._scorer_loss(interest, vectors, logits.detach(), target, features.known)
            total = total + c.scorer_weight * scorer
            parts["scorer"] = scorer.item()
        if c.cold_weight > 0 and c.use_id and (c.use_text or c.use_image):
            cold = self._cold_loss(features, vectors)
            total = total + c.cold_weight * cold
            parts["cold"] = cold.item()
        if c.alignment_weight > 0 and c.use_text and c.use_image:
            both = torch.nonzero(features.present.all(1) & features.known).squeeze(1)
            if len(both) > 1:
                pick = both[torch.randperm(len(both), device=both.device)[: c.alignment_batch]]
                align = self.fusion.alignment_loss(features.text[pick], features.image[pick])
                total = total + c.alignment_weight * align
                parts["alignment"] = align.item()
        self.loss_parts = parts
        return total

    def _cold_loss(self, features: ItemFeatures, vectors: torch.Tensor) -> torch.Tensor:
        """Mean squared error between content-only vectors ``(K, D)`` of ``cold_batch`` random trained items with
        content and their full vectors (detached: the content path learns to imitate, the ID path is untouched)."""
        c = self.config
        has_content = (features.present[:, 0] & c.use_text) | (features.present[:, 1] & c.use_image)
        eligible = torch.nonzero(features.known & has_content).squeeze(1)
        if len(eligible) == 0:
            return vectors.new_zeros(())
        pick = eligible[torch.randperm(len(eligible), device=eligible.device)[: c.cold_batch]]
        sample = features.take(pick)
        content_only = self.item_vectors(ItemFeatures(sample.text, sample.image, sample.present, sample.id_index,
                                                      torch.zeros_like(sample.known)))
        return F.mse_loss(content_only, vectors[pick].detach())

    def _scorer_loss(self, interest, vectors, logits, target, known) -> torch.Tensor:
        """Train the MLP re-ranker on what it sees at inference: the retrieval's top ``rerank`` candidates.

        Listwise cross-entropy over those candidates for the targets retrieval found, plus binary cross-entropy of
        the target against uniform random negatives among the ``known`` (trained) items, which anchors the sigmoid
        as a probability. Interest and item vectors are detached: the re-ranker learns on top of the retrieval
        space without distorting it."""
        c = self.config
        interest, vectors = interest.detach(), vectors.detach()
        if len(target) > c.scorer_targets:
            keep = torch.randperm(len(target), device=target.device)[: c.scorer_targets]
            interest, logits, target = interest[keep], logits[keep], target[keep]
        total = interest.new_zeros(())
        k = min(c.scorer.rerank, logits.shape[1])
        if k > 1:
            top = logits.topk(k, dim=1).indices  # (M, k)
            hit = top == target[:, None]
            found = hit.any(1)
            if found.any():
                scores = self.scorer.logits(interest[found], vectors[top[found]])
                total = total + F.cross_entropy(scores, hit[found].float().argmax(1))
        n_random = c.scorer_negatives
        pool = torch.nonzero(known).squeeze(1)
        negatives = pool[torch.randint(0, len(pool), (len(target), n_random), device=target.device)]
        candidates = torch.cat([target[:, None], negatives], 1)
        labels = (candidates == target[:, None]).float()
        scores = self.scorer.logits(interest, vectors[candidates])
        return total + F.binary_cross_entropy_with_logits(scores, labels)


def _at_width(features: torch.Tensor, width: int, modality: str) -> torch.Tensor:
    """``features (N, F)`` as the fusion reads them, ``(N, width)``: a modality the store holds nothing for (``F`` =
    0) is all zeros, masked out as absent, so the network's shape does not depend on which modalities a store has."""
    if features.shape[1] == width:
        return features
    if features.shape[1] == 0:
        return features.new_zeros((features.shape[0], width))
    raise ValueError(f"{modality} features are {features.shape[1]} wide but the model reads {width}: the store was "
                     "embedded with another encoder than the model was trained on; retrain or re-embed")
