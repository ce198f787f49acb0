"""How ``recommend`` finds its candidates: every item scored exactly, or an ANN index for large catalogues.

``retrieval="exact"`` scores every item (what evaluation measures). ``"ann"`` asks an :class:`~mmrec.serve.index.
ItemIndex` for the best rows by the served retrieval score ``interest · v + bias * new`` (the new-item policy's lift:
the index holds each vector with one more coordinate, 1 for items the model never trained on, and each query carries
the policy's ``bias`` there, so a changed policy needs no rebuild), then the model re-ranks and places new items on
those candidates exactly as on the whole catalogue. ``"auto"`` is exact below
:data:`~mmrec.serve.index.AUTO_EXACT_BELOW` items, ANN from there (the measured crossover).

The index of a model lives at ``STORE/index/<model_id>.faiss`` (FAISS's own format), with the item id of every row
in its trailer. :func:`open_index` brings it up to date with the catalogue: items embedded since it was saved are
added (no rebuild); it is rebuilt when an item it holds changed its vector or left the store, or when the file is
missing or unreadable. ``mmrec train`` builds it for catalogues at or above the crossover, ``mmrec embed`` adds new
items to an existing one, and a ``Recommender`` loaded with ANN retrieval does either itself when needed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .index import AUTO_EXACT_BELOW, IndexConfig, ItemIndex
from .items import ServedItems

__all__ = ["RETRIEVALS", "AnnRetrieval", "exact_candidates", "index_path", "open_index", "resolve_retrieval", "update_index"]

RETRIEVALS = ("exact", "ann", "auto")
INDEX_DIR = "index"
log = logging.getLogger(__name__)


def resolve_retrieval(retrieval: str, n_items: int) -> str:
    """``"exact"`` or ``"ann"`` for a catalogue of ``n_items``; ``ValueError`` naming ``retrieval``."""
    if retrieval not in RETRIEVALS:
        raise ValueError(f"retrieval must be one of {RETRIEVALS}, got {retrieval!r}")
    if retrieval == "auto":
        return "ann" if n_items >= AUTO_EXACT_BELOW else "exact"
    return retrieval


def index_path(store_path: str | Path, model_id: str) -> Path:
    return Path(store_path) / INDEX_DIR / f"{model_id}.faiss"


def _indexed(items: ServedItems) -> np.ndarray:
    """``(N, D+1) float32``: item vectors with the new-item flag as the last coordinate."""
    vectors = items.vectors.detach().cpu().numpy()
    return np.hstack([vectors, items.new.cpu().numpy().astype(np.float32)[:, None]])


def open_index(store_path: str | Path, model_id: str, items: ServedItems, config: IndexConfig | None = None,
               save: bool = True) -> tuple[ItemIndex, list[str]]:
    """The index of ``model_id`` over ``items``, and the item id of each of its rows. Loads the saved one, adds the
    items it lacks, or rebuilds it (module docstring); saves it when it changed and ``save`` (a store that cannot be
    written keeps the index in memory, with a warning)."""
    path = index_path(store_path, model_id)
    matrix = _indexed(items)
    index, ids, changed = None, [], False
    try:
        index = ItemIndex.load(path, config, dim=matrix.shape[1])
        ids = [str(i) for i in index.extra.get("item_ids", [])]
    except FileNotFoundError:
        pass
    except ValueError as error:
        log.warning("rebuilding the item index: %s", error)
    if index is not None:
        at = np.fromiter((items.row.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
        if len(ids) != len(index) or (at < 0).any() or not np.array_equal(index.vectors(np.arange(len(ids))),
                                                                            matrix[at]):
            log.info("item index %s is out of date (items changed or removed): rebuilding", path)
            index = None
    if index is None:
        index, ids, changed = ItemIndex.build(matrix, config), list(items.ids), True
    else:
        held = set(ids)
        added = [i for i, item in enumerate(items.ids) if item not in held]
        if added:
            index.add(matrix[added])
            ids += [items.ids[i] for i in added]
            changed = True
    if changed and save:
        try:
            path.parent.mkdir(exist_ok=True)
            index.save(path, {"model_id": model_id, "item_ids": ids})
        except OSError as error:
            log.warning("could not save the item index to %s (%s): it is kept in memory only", path, error)
    index.extra = {"model_id": model_id, "item_ids": ids}
    return index, ids


def update_index(store_dir: str | Path, build: bool | None = None) -> Path | None:
    """Bring the current model's index up to date after ``mmrec train`` / ``mmrec embed``: build it when ``build``
    (``None``: when the catalogue is at or above the crossover, where ``retrieval="auto"`` uses it), else only update
    one that exists. Returns its path, or ``None`` when there is none (no model, or nothing to do)."""
    from ..store import DB_NAME, Store
    from ..trained import MODEL_DIR, TrainedModel
    from .items import load_items

    if not (Path(store_dir) / DB_NAME).is_file():
        return None  # nothing was stored (an embed that rejected every row)
    with Store(store_dir, create=False) as store:
        _, model_id = store.current_model()
        if model_id is None or not (store.path / MODEL_DIR).is_dir():
            return None
        path = index_path(store.path, model_id)
        if not path.exists():
            if build is None:
                build = len(store.item_ids()) >= AUTO_EXACT_BELOW
            if not build:
                return None
        trained = TrainedModel.load(store.path / MODEL_DIR)
        if trained.model_id != model_id:
            return None  # a retrain is committing: its own run builds the index
        open_index(store.path, model_id, load_items(store, trained, torch.device("cpu")))
        for old in path.parent.glob("*.faiss"):
            if old != path:  # superseded models' indexes (a process still serving one holds it in memory)
                old.unlink(missing_ok=True)
        return path


def exact_candidates(dot: torch.Tensor, new: torch.Tensor, new_rows: torch.Tensor, fetch: int, k: int,
                     slots: int) -> torch.Tensor | None:
    """Rows ``(C,)`` whose ranking alone gives the whole catalogue's top ``k`` for one user, from their retrieval
    scores ``dot (N,)`` (excluded items ``-inf``; ``new (N,)`` bool, ``new_rows`` its positions): the best ``fetch``
    (the re-ranker's candidates and ``k``) plus the best ``slots`` new items. ``None`` where that would not be
    exact and the caller must rank every item: fewer rankable items than ``fetch`` or new items than ``slots``, or
    fewer trained items among the best than the places the re-ranking leaves them (``k - slots``)."""
    if fetch >= len(dot):
        return None
    top = dot.topk(fetch)
    if not bool(torch.isfinite(top.values[-1])):
        return None
    if not slots or not len(new_rows):
        return top.indices
    if int((~new[top.indices]).sum()) < k - slots:
        return None
    best_new = dot[new_rows].topk(min(slots, len(new_rows)))
    if len(best_new.values) < slots or not bool(torch.isfinite(best_new.values[-1])):
        return None
    extra = new_rows[best_new.indices]
    return torch.cat([top.indices, extra[~torch.isin(extra, top.indices)]])


class AnnRetrieval:
    """Candidates from an :class:`ItemIndex` whose rows are the items ``ids`` (any order) of ``items``."""

    def __init__(self, index: ItemIndex, ids: list[str], items: ServedItems) -> None:
        self.index = index
        self._served = torch.tensor([items.row[i] for i in ids], dtype=torch.long)  # index row -> served row
        self._from_served = torch.empty(len(items), dtype=torch.long)
        self._from_served[self._served] = torch.arange(len(ids))
        self._new_rows = items.new_rows.cpu()

    def candidates(self, interests: torch.Tensor, bias: float, seen: list[torch.Tensor] | None, fetch: int,
                   new_slots: int, vectors: torch.Tensor) -> list[torch.Tensor]:
        """Served rows ``(C_u,)`` per user: the best ``fetch`` by ``interest · v + bias * new`` that are not in
        ``seen`` (exact exclusion), plus the best ``new_slots`` new items by the same score, found exactly, so the
        new-item places fill as over the whole catalogue. ``interests (U, D)``, ``vectors (N, D)``."""
        queries = np.hstack([interests.detach().cpu().numpy(), np.full((len(interests), 1), bias, np.float32)])
        exclude = None if seen is None else [self._from_served[s.cpu()].numpy() for s in seen]
        _, rows = self.index.search(queries, min(fetch, len(self.index)), exclude)
        rows = torch.from_numpy(rows)
        out = []
        for u in range(len(interests)):
            found = self._served[rows[u][rows[u] >= 0]]
            if new_slots and len(self._new_rows):
                new = self._new_rows
                if seen is not None and len(seen[u]):
                    new = new[~torch.isin(new, seen[u].cpu())]
                best = (vectors[new.to(vectors.device)] @ interests[u]).topk(min(new_slots, len(new))).indices
                found = torch.cat([found, new[best.cpu()]]).unique()
            out.append(found)
        return out
