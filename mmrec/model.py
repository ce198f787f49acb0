"""The multimodal sequential recommender: fusion -> item vectors -> GRU interests -> MLP scorer.

Implements the interface every model in mmrec shares (RecBole style): ``loss(batch)`` for training and
``full_sort_scores(batch)`` for ranking the whole catalogue, plus ``item_vectors`` and the one-step ``advance``
used for real-time interest updates. Weights save as safetensors with a JSON config (no pickles).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .behaviour import BehaviourBatch
from .fusion import FusionConfig, ItemFusion
from .interest import InterestConfig, InterestModel
from .scorer import MLPScorer, ScorerConfig

__all__ = ["ItemFeatures", "ModelConfig", "MultimodalRecommender", "ModelLoadError"]


# Similarities computed at once when new items look for their nearest trained items (64 MiB of float32).
_SIMILARITY_BLOCK = 1 << 24


class ModelLoadError(ValueError):
    """A saved model cannot be used with this store (encoder mismatch, missing files...)."""


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network. ``use_text``/``use_image``/``use_id`` select the item signals
    (ID only = a GRU4Rec-equivalent baseline); loss weights balance next-item cross-entropy (full softmax over the
    items seen in training), the re-ranker's loss (on ``scorer_targets`` sampled targets, with ``scorer_negatives``
    random negatives each), the fusion's contrastive alignment and the cold-item loss: on ``cold_batch`` random
    trained items, the content-only vector (ID hidden) regresses onto the item's full vector, so an item never seen
    in training lands where a trained item with that content would, not in a region the interests never point at.
    ``new_item_bias`` / ``new_item_logit_bias`` are added to the retrieval score / the re-ranker's logit of every
    item not seen in training: neither stage ever ranked such items against trained ones, so their scores are not
    on the same scale; training chooses both on validation (:func:`mmrec.training.calibrate_new_item_bias`), and
    with them ``new_item_text_only``: outside training, an item not seen in training that has a text is built from
    the text alone, its image ignored (on ml-latest-small's cold protocol posters made new items' vectors rank them
    far worse among themselves), or ``new_item_neighbours`` > 0: such an item with a text takes the vectors of the
    trained items whose texts are nearest its own instead (see :meth:`MultimodalRecommender.neighbour_vectors`).
    ``new_item_slots`` > 0 instead guarantees new items exposure: in every ranking the last ``new_item_slots`` places
    of the first ``new_item_slot_depth`` go to the best-scored new items (see
    :meth:`MultimodalRecommender.place_new_items`); :func:`mmrec.training.calibrate_new_item_slots` chooses it."""

    fusion: FusionConfig = field(default_factory=FusionConfig)
    interest: InterestConfig = field(default_factory=InterestConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    use_text: bool = True
    use_image: bool = True
    use_id: bool = True
    scorer_weight: float = 0.2
    alignment_weight: float = 0.1
    cold_weight: float = 1.0
    scorer_negatives: int = 8
    scorer_targets: int = 512
    alignment_batch: int = 512
    cold_batch: int = 2048
    new_item_bias: float = 0.0
    new_item_logit_bias: float = 0.0
    new_item_text_only: bool = False
    new_item_neighbours: int = 0
    new_item_neighbour_temperature: float = 0.05
    new_item_slots: int = 0
    new_item_slot_depth: int = 20

    def __post_init__(self) -> None:
        if self.new_item_slot_depth < 1:
            raise ValueError(f"new_item_slot_depth must be >= 1, got {self.new_item_slot_depth}")
        if self.new_item_neighbours < 0 or self.new_item_neighbour_temperature <= 0:
            raise ValueError(f"new_item_neighbours must be >= 0 and new_item_neighbour_temperature > 0, got "
                             f"{self.new_item_neighbours} and {self.new_item_neighbour_temperature}")
        if not 0 <= self.new_item_slots <= self.new_item_slot_depth:
            raise ValueError(f"new_item_slots must be in [0, new_item_slot_depth={self.new_item_slot_depth}], "
                             f"got {self.new_item_slots}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        data = dict(data)
        return cls(
            fusion=FusionConfig(**data.pop("fusion")),
            interest=InterestConfig(**data.pop("interest")),
            scorer=ScorerConfig(**data.pop("scorer")),
            **data,
        )


@dataclass
class ItemFeatures:
    """Stored encoder features of ``N`` items, aligned with the model's item order.

    ``text (N, 384)``, ``image (N, 1280)`` float32; ``present (N, 2)`` bool (text, image); ``id_index (N,)`` long
    into the ID embedding; ``known (N,)`` bool: the item was seen in training, so its ID token may be used.
    """

    text: torch.Tensor
    image: torch.Tensor
    present: torch.Tensor
    id_index: torch.Tensor
    known: torch.Tensor

    def __len__(self) -> int:
        return int(self.present.shape[0])

    def to(self, device: torch.device | str) -> "ItemFeatures":
        return ItemFeatures(*(t.to(device) for t in (self.text, self.image, self.present, self.id_index, self.known)))

    def take(self, index: torch.Tensor) -> "ItemFeatures":
        return ItemFeatures(*(t[index] for t in (self.text, self.image, self.present, self.id_index, self.known)))


class MultimodalRecommender(nn.Module):
    """Fusion + interest GRU + scorer.

    Shapes: ``item_vectors(features) -> (N, D)``; ``interests(batch, V) -> (B, D)`` for the state after each row's
    last event; ``full_sort_scores(batch, V) -> (B, N)``; ``loss(batch, features) -> (scalar, {part: float})``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        if not (config.use_text or config.use_image or config.use_id):
            raise ValueError("ModelConfig: at least one of use_text, use_image, use_id must be True")
        self.fusion = ItemFusion(config.fusion)
        self.interest_model = InterestModel(config.interest)
        self.scorer = MLPScorer(config.scorer)

    # -- items -------------------------------------------------------------------------------------------------
    def item_vectors(self, features: ItemFeatures) -> torch.Tensor:
        """``(N, D)`` fused vectors of the given items."""
        c = self.config
        present = features.present.clone()
        present[:, 0] &= c.use_text
        present[:, 1] &= c.use_image
        if c.new_item_text_only and not self.training:  # training's content-only vectors keep every modality
            present[:, 1] &= features.known | ~present[:, 0]
        vectors = self.fusion(
            features.text if c.use_text else None,
            features.image if c.use_image else None,
            present,
            features.id_index if c.use_id else None,
            features.known if c.use_id else None,
        )
        if c.new_item_neighbours and c.use_text and not self.training:
            vectors = self.neighbour_vectors(features, vectors)
        return vectors

    def neighbour_vectors(self, features: ItemFeatures, vectors: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` ``vectors`` where every item not seen in training that has a text takes the softmax-weighted
        (``config.new_item_neighbour_temperature`` over cosine similarity) mean of the vectors of the
        ``config.new_item_neighbours`` trained items with the most similar text encoder features, scaled to the
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
        k = min(c.new_item_neighbours, len(source))
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
        padded = torch.cat([vectors, vectors.new_zeros(1, vectors.shape[1])])
        text = has_text = None
        if self.interest_model.text_proj is not None and text_table is not None and len(text_table):
            has_text = texts >= 0
            text = text_table[texts.clamp(min=0)]
        return self.interest_model.event_inputs(padded[items], events, gaps, text, has_text)

    def states(self, batch: BehaviourBatch, vectors: torch.Tensor, state: torch.Tensor | None = None,
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

    def interests(self, batch: BehaviourBatch, vectors: torch.Tensor, text_table: torch.Tensor | None = None):
        """``(B, D)`` interest vectors after each row's events (from the initial state)."""
        _, last = self.states(batch, vectors, text_table=text_table)
        return self.interest_model.interest(last)

    # -- scoring -----------------------------------------------------------------------------------------------
    def rerank(self, interest: torch.Tensor, vectors: torch.Tensor, dot: torch.Tensor,
               new_items: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``(B, N)`` where the top ``rerank`` items by dot product are ordered by the MLP and placed above
        every other item; the rest keep their dot-product order. ``new_items (N,)`` bool: items whose logits get
        ``config.new_item_logit_bias``."""
        k = min(self.config.scorer.rerank, dot.shape[1])
        if k == 0:
            return dot
        top = dot.topk(k, dim=1).indices  # (B, k)
        logits = self.scorer.logits(interest, vectors[top])
        if new_items is not None and self.config.new_item_logit_bias:
            logits = logits + self.config.new_item_logit_bias * new_items[top].to(logits.dtype)
        offset = dot.max() - logits.min() + 1.0
        candidates = dot.gather(1, top)
        # with fewer rankable items than `rerank`, masked (-inf) items are among the top k: they stay masked
        return dot.scatter(1, top, torch.where(candidates == float("-inf"), candidates, logits + offset))

    def full_sort_scores(self, batch: BehaviourBatch, vectors: torch.Tensor, exclude: torch.Tensor | None = None,
                         text_table: torch.Tensor | None = None, new_items: torch.Tensor | None = None):
        """``(B, N)`` ranking scores over every item; ``exclude (B, N)`` bool masks items before re-ranking so the
        MLP spends its candidates on rankable items; ``new_items (N,)`` bool marks items not seen in training,
        whose retrieval scores get ``config.new_item_bias``."""
        interest = self.interests(batch, vectors, text_table)
        dot = interest @ vectors.T
        if new_items is not None and self.config.new_item_bias:
            dot = dot + self.config.new_item_bias * new_items.to(dot.dtype)
        if exclude is not None:
            dot = dot.masked_fill(exclude, float("-inf"))
        return self.place_new_items(self.rerank(interest, vectors, dot, new_items), new_items)

    def place_new_items(self, scores: torch.Tensor, new_items: torch.Tensor | None, slots: int | None = None,
                        depth: int | None = None) -> torch.Tensor:
        """``(B, N)`` scores reordered so that in every row places ``1 .. depth - slots`` hold the best trained items
        and the next ``slots`` places the best new items (``new_items (N,)`` bool), by ``scores``; every other item
        follows in its own order, and ``-inf`` (excluded) stays ``-inf``. A row with too few rankable new (trained)
        items fills the rest of the ``depth`` places with trained (new) ones in their order. ``slots``, ``depth``:
        by default the config's ``new_item_slots``, ``new_item_slot_depth``; 0 slots or no new items returns
        ``scores`` unchanged. Ties are broken by ``topk``'s order: a model that scores every new item the same (ID
        only) fills its places with arbitrary ones.

        Why places at the end of the list: trained items keep their order and new items leave the first
        ``depth - slots`` places, so wherever new items rarely reach the top anyway NDCG@10 barely moves, and every
        list holds new items, where an additive lift lets them in wherever their lifted score lands."""
        slots = self.config.new_item_slots if slots is None else slots
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
    def loss(self, batch: BehaviourBatch, features: ItemFeatures, text_table: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Next-item cross-entropy over every item seen in training (full softmax) + the re-ranker's loss +
        text-image alignment + the cold-item loss."""
        c = self.config
        vectors = self.item_vectors(features)  # (N, D)
        out, _ = self.states(batch, vectors, text_table=text_table)
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
        return total, parts

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

    # -- persistence -------------------------------------------------------------------------------------------
    def save(self, folder: Path, extra: dict) -> None:
        """``model.safetensors`` + ``config.json`` (the model config, the weights' SHA-256 and ``extra``: item ids,
        event vocabulary, encoder versions...). Each is written to a temporary name and renamed; a crash between
        the two renames leaves new weights beside the old config, which :meth:`load` detects by the hash. Both
        files reach the disk before they replace the old ones, so a power cut cannot leave a renamed but empty
        file in place of a model that was there."""
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        tmp_weights, tmp_config = folder / "model.safetensors.tmp", folder / "config.json.tmp"
        save_file(tensors, str(tmp_weights))
        meta = {"model": self.config.to_dict(), "weights_sha256": _sha256(tmp_weights), **extra}
        tmp_config.write_text(json.dumps(meta, indent=2))
        _fsync(tmp_weights)
        _fsync(tmp_config)
        tmp_weights.replace(folder / "model.safetensors")
        tmp_config.replace(folder / "config.json")
        if os.name == "posix":  # the renames themselves live in the folder's entry; Windows cannot open a folder
            _fsync(folder)

    @classmethod
    def load(cls, folder: Path) -> tuple["MultimodalRecommender", dict]:
        config_path, weights_path = folder / "config.json", folder / "model.safetensors"
        if not config_path.is_file() or not weights_path.is_file():
            raise ModelLoadError(f"no trained model in {folder} (run `mmrec train` first)")
        try:
            meta = json.loads(config_path.read_text())
            config = ModelConfig.from_dict(meta["model"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{config_path} is not a model config ({exc!r}); retrain with `mmrec train`") from None
        # Models saved before the hash was recorded have none; they load unchecked.
        expected = meta.get("weights_sha256")
        if expected is not None and _sha256(weights_path) != expected:
            raise ModelLoadError(
                f"{weights_path} does not belong to {config_path} (a save was interrupted between the two files?); "
                "retrain with `mmrec train`")
        model = cls(config)
        try:
            model.load_state_dict(load_file(str(weights_path)))
        except (RuntimeError, OSError, SafetensorError) as exc:
            raise ModelLoadError(f"{weights_path} does not fit {config_path}: {exc}") from None
        model.eval()
        return model, meta


def _fsync(path: Path) -> None:
    # Windows flushes only a file opened for writing (and cannot open a folder at all); POSIX takes either
    fd = os.open(path, os.O_RDONLY if path.is_dir() else os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
