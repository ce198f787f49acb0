"""The Python API: load a trained store, score user-item pairs, recommend top-k, update interests per event.

Example::

    from mmrec import Recommender
    rec = Recommender.load("stores/ml")
    rec.score("1", ["260", "1210"])               # array([0.91, 0.88], dtype=float32)
    rec.recommend("1", k=10)                       # [("1196", 0.93), ...]
    rec.observe("1", "2628", timestamp=1700000000) # one GRU step; the next score reflects it
    rec.score(history=[("260", "interaction", 1), ("1196", "interaction", 2)], item_ids=["1210"])

Retraining: reads keep serving the model a ``Recommender`` loaded, but once ``train_store`` has installed a newer
model in the store (a new generation in its meta table), ``observe`` / ``apply_events`` / ``rebuild`` raise
:class:`~mmrec.store.StaleModelError` rather than write states of a superseded model: ``Recommender.load`` the
store again. Reads never write: a user whose stored state came from another model is recomputed from the event log
in memory, for the answer only.

Serving holds the catalogue in memory (item ids, an id -> row map, the item vectors read from the store) and reads
users through a cache written through on every ``observe``; a write another process commits is seen by the next call
(:mod:`mmrec.serve.users`). ``Recommender`` is safe to share between threads; events from several threads are
committed together (:mod:`mmrec.serve.commit`). ``retrieval`` picks exact or ANN top-k (:mod:`mmrec.serve.retrieval`).

Threads: ``Recommender.load`` sets torch's intra-op thread count for the process (``threads``, default
:data:`SERVING_THREADS` = 1: on a small CPU a single request answers fastest on one thread, and throughput scales
with processes, ``mmrec serve --workers``); ``threads=None`` leaves the process's setting alone.

Cold users: a user id the store has never seen is scored from the learned initial state, i.e. the interest the
model assigns before any event (close to "what new users engage with first"), and gets a stored state from their
first observed event on. Items embedded after training have no learned ID and are represented by their content.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..encoders.preprocess import clean_behaviour_texts
from ..folding import EventFolder
from ..forget import forget_users
from ..io.values import id_string, unix_seconds
from ..pseudonym import IdKey, bind_id_key
from ..store import StaleModelError, Store
from ..trained import MODEL_DIR, TrainedModel, check_encoders, model_device
from .commit import GroupCommit
from .diversity import POOL_FACTOR, mmr
from .explain import Reason, explained_window, leave_one_out, reasons
from .index import IndexConfig
from .items import load_items
from .retrieval import AnnRetrieval, exact_candidates, open_index, resolve_retrieval
from .rules import EventRules
from .users import UserCache

__all__ = ["Recommender", "Event", "StaleModelError", "SERVING_THREADS"]

#: ``(item_id, event, timestamp)`` or ``(item_id, event, timestamp, text)``.
Event = tuple

SERVING_THREADS = 1
"""torch intra-op threads of a served process by default: on a 2-core machine ``score`` 1 x 1,000 took ~76 ms at
torch's default of 2 threads (waiting on each other for work this small), ~2 ms at 1; scale with processes."""

class Recommender:
    """A trained model bound to its store. Build with :meth:`load`."""

    def __init__(self, store: Store, trained: TrainedModel, device: torch.device,
                 generation: int | None = None, retrieval: str = "exact",
                 index_config: IndexConfig | None = None, id_key: IdKey | None = None) -> None:
        self.store = store
        #: user ids are stored as pseudonyms under this key (:mod:`mmrec.pseudonym`); ``None``: as given
        self.id_key = id_key
        #: the store's model generation when this model was loaded (read before the model files)
        self.generation: int = store.current_model()[0] if generation is None else generation
        self.trained = trained
        self.model = trained.network.to(device)
        self.meta = trained.meta
        self.device = device
        self.model_id: str = trained.model_id
        self.event_names: tuple[str, ...] = trained.event_names
        self.interaction_events: tuple[str, ...] = trained.interaction_events
        #: events read by their text (the context events training had, e.g. ``"tag"``)
        self.text_events: tuple[str, ...] = trained.text_events
        self.default_event: str = trained.default_event
        self.max_len: int = self.model.max_len
        self.items = load_items(store, trained, device)
        self.item_ids: list[str] = self.items.ids
        self.item_vectors = self.items.vectors  # (N, D)
        # Items the model never trained on are ranked by the validation-chosen policy, as in evaluation.
        self._new_items = self.items.new  # (N,) bool
        self.folder = EventFolder(store, self.model, self.item_ids, self.item_vectors, self.event_names, device,
                                  position=self.items.row)
        with torch.inference_mode():
            self._cold = self.model.interest_model.interest(self.model.interest_model.initial(1))[0].clone()
        self._bias, self._bias_of = self.items.new_bias, self.model.new_items.bias
        #: ``"exact"`` or ``"ann"``: how :meth:`recommend` finds candidates (:mod:`mmrec.serve.retrieval`)
        self.retrieval = resolve_retrieval(retrieval, len(self.items))
        self._ann = None
        if self.retrieval == "ann":
            self._ann = AnnRetrieval(*open_index(store.path, self.model_id, self.items, index_config), self.items)
        self.rules = EventRules(self.items.row, self.folder.event_rank, self.text_events, self.default_event)
        self._lock = threading.RLock()
        self.users = UserCache(store, self.folder, self.model_id, self._cold, self.items.row,
                               self.interaction_events, self._lock)
        self._commits: GroupCommit[dict[str, int]] = GroupCommit(self._commit)
        self._checked_at: int | None = None  # the data_version at which this model was last found current

    # -- loading -----------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, store: str | Path | Store, device: str = "auto", *, threads: int | None = SERVING_THREADS,
             durability: str = "normal", retrieval: str = "auto", index: IndexConfig | None = None,
             id_key: IdKey | str | Path | None = None) -> Recommender:
        """Open ``store`` and its trained model. ``threads``: torch's intra-op threads for this process (``None``:
        unchanged); ``durability``: ``"normal"`` or ``"full"`` (see :data:`mmrec.store.DURABILITY`) for the
        events and states this process commits; ``retrieval``: ``"exact"``, ``"ann"`` or ``"auto"`` (exact below
        :data:`~mmrec.serve.index.AUTO_EXACT_BELOW` items; :mod:`mmrec.serve.retrieval`), ``index``: the ANN
        index's settings; ``id_key``: a pseudonymised store's key file (``None``: ``MMREC_ID_KEY``; callers keep
        passing raw user ids, :class:`~mmrec.pseudonym.IdKeyError` without the store's key). Raises :class:`~mmrec.trained.ModelLoadError` when there is no
        model or the store's features were made by other encoders than the ones the model was trained on, and
        ``ValueError`` naming ``device``, ``threads``, ``durability`` or ``retrieval`` when it is not valid here."""
        torch_device = model_device(device)
        resolve_retrieval(retrieval, 0)
        if threads is not None:
            if not isinstance(threads, numbers.Integral) or isinstance(threads, bool) or threads < 1:
                raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
            torch.set_num_threads(int(threads))
        store = store if isinstance(store, Store) else Store(store, create=False, durability=durability)
        for _ in range(10):
            # the generation is read before the files: a retrain committing in between makes this load stale (its
            # writes are refused), never a superseded model current
            generation, current = store.current_model()
            trained = TrainedModel.load(store.path / MODEL_DIR)
            if current in (None, trained.model_id):
                break
            time.sleep(0.1)  # the files are newer than the store: a retrain is about to commit
        check_encoders(trained, store.encoders())
        return cls(store, trained, torch_device, generation, retrieval, index, bind_id_key(store, id_key))

    def close(self) -> None:
        """Close the store connection; ``with Recommender.load(...) as rec:`` does it on leaving."""
        with self._lock:
            self.store.close()

    def __enter__(self) -> Recommender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def is_current(self) -> bool:
        """Whether this model is still the store's current one (no retrain since it was loaded)."""
        with self._lock:
            generation, current = self.store.current_model()
        return generation == self.generation and current in (None, self.model_id)

    def _check_current(self) -> None:
        """Raise :class:`StaleModelError` unless this model is the store's current one; called inside the write
        transaction, so no retrain can commit between the check and the write."""
        generation, current = self.store.current_model()
        if generation != self.generation:
            raise StaleModelError(
                f"store {self.store.path} was retrained since this Recommender loaded model {self.model_id} "
                f"(generation {self.generation}; now {current}, generation {generation}): its states would be "
                "stale, so nothing was written. Recommender.load the store again")
        if current not in (None, self.model_id):
            raise StaleModelError(
                f"store {self.store.path}'s current model is {current}, but its model files hold {self.model_id} "
                "(a retrain was interrupted?): nothing was written. Retrain with `mmrec train`, or "
                "Recommender.load the store again")

    # -- helpers -----------------------------------------------------------------------------------------------
    def _rows(self, item_ids: Iterable, name: str = "item id") -> torch.Tensor:
        """``(C,)`` rows of ``item_ids`` in the item vectors; ``KeyError`` listing unknown ones."""
        row = self.items.row
        try:  # ids already spelled as the store spells them: one dict lookup each
            return torch.from_numpy(np.fromiter((row[i] for i in item_ids), dtype=np.int64))
        except (KeyError, TypeError):
            pass
        ids = [id_string(i, name) for i in item_ids]
        unknown = [i for i in ids if i not in row]
        if unknown:
            raise KeyError(f"unknown item id(s) {unknown[:10]}: not in the store (embed them first)")
        return torch.tensor([row[i] for i in ids], dtype=torch.long)

    def _history_interest(self, history: Sequence[Event]) -> torch.Tensor:
        window, previous = self.folder.window(self.folder.sorted(self.rules.history(history)))
        if not window:
            return self._cold
        with self._lock:  # event texts may be read from the store's cache
            _, interest = self.folder.advance([window], None, [previous])
        return interest[0]

    def _new_bias(self) -> torch.Tensor:
        """``(N,)`` the new-item policy's retrieval lift per item, remade only when the policy changes."""
        bias = self.model.new_items.bias
        if self._bias_of != bias:
            self._bias, self._bias_of = bias * self._new_items.float(), bias
        return self._bias

    def _user_ids(self, user_ids: Sequence, stored: bool = True) -> list[str]:
        """``user_ids`` read as ids, as the store holds them (``stored``: pseudonyms under the id key)."""
        if not isinstance(user_ids, Iterable) or isinstance(user_ids, (str, bytes)):
            raise ValueError(f"user_ids must be a list of user ids, got {user_ids!r}")
        ids = [id_string(u, f"user_ids[{n}]") for n, u in enumerate(user_ids)]
        return self.id_key.pseudonyms(ids) if stored and self.id_key else ids

    # -- public API --------------------------------------------------------------------------------------------
    def score(self, user_id=None, item_ids: Sequence | None = None, *, history: Sequence[Event] | None = None
              ) -> np.ndarray:
        """Probability ``(len(item_ids),) float32`` in [0, 1] that the user engages with each item, in the given
        order. Give either a stored ``user_id`` (unknown users get the cold-user fallback) or a ``history`` of
        ``(item_id, event, timestamp)`` for a user the store has never seen. Ids are strings or integers."""
        if (user_id is None) == (history is None):
            raise ValueError("give exactly one of user_id or history")
        if history is None:
            return self.score_many([id_string(user_id, "user_id")], item_ids)[0]
        items = self._candidate_rows(item_ids)
        interest = self._history_interest(history)
        return self._probabilities(interest[None], items)[0]

    def score_many(self, user_ids: Sequence, item_ids: Sequence) -> np.ndarray:
        """``(U, C) float32`` probabilities of every user in ``user_ids`` for every item in ``item_ids``, in one
        forward pass (see :meth:`score`)."""
        users = self._user_ids(user_ids)
        items = self._candidate_rows(item_ids)
        return self._probabilities(self.users.interests(users), items)

    def _candidate_rows(self, item_ids) -> torch.Tensor:
        if not isinstance(item_ids, Iterable) or isinstance(item_ids, (str, bytes)):
            raise ValueError(f"item_ids must be a list of item ids, got {item_ids!r}")
        return self._rows(item_ids)

    @torch.inference_mode()
    def _probabilities(self, interests: torch.Tensor, items: torch.Tensor) -> np.ndarray:
        if len(items) == 0:
            return np.zeros((len(interests), 0), np.float32)
        candidates = self.item_vectors[items.to(self.device)]  # (C, D)
        probs = self.model.scorer.probability(interests, candidates.expand(len(interests), *candidates.shape))
        return probs.float().cpu().numpy()

    def recommend(self, user_id, k: int = 10, exclude_seen: bool = True, explain: bool = False,
                  diversity: float = 0.0) -> list[tuple[str, float]] | list[tuple[str, float, list[Reason]]]:
        """Top ``k`` ``(item_id, probability)`` over the whole catalogue, in the order evaluation measures:
        dot-product retrieval (exact, or ANN candidates re-scored exactly: ``retrieval``), then the MLP scorer re-ranks the best ``rerank`` (``ScorerConfig``; 0 = dot product
        alone) and any further ones follow in dot-product order. Probabilities are the scorer's. ``exclude_seen``
        leaves out the items of the user's interaction events (the kinds training predicted); an item the user only
        tagged stays rankable, as in evaluation. A model whose ``NewItemPolicy`` has ``slots`` gives the last
        places of the list to the best new items, as many as it reserves in ``new_item_slot_depth`` places scaled
        to ``k`` (halves rounded up: 6 of 20 are 3 of 10, 5 of 20 are 3 of 10); evaluation measured the lists of
        ``new_item_slot_depth``. ``explain=True`` adds each item's :meth:`explain` reasons (top 3) as a third
        element. ``diversity`` in [0, 1] re-orders the ``POOL_FACTOR * k`` best by maximal marginal relevance over
        item vectors (:mod:`mmrec.serve.diversity`; 0: this order exactly)."""
        if not isinstance(diversity, numbers.Real) or not 0 <= diversity <= 1:
            raise ValueError(f"diversity must be a number in [0, 1], got {diversity!r}")
        if diversity:
            pool = self.recommend_many([id_string(user_id, "user_id")], POOL_FACTOR * k, exclude_seen)[0]
            vectors = self.item_vectors[self._rows([i for i, _ in pool])]
            order = mmr(torch.tensor([p for _, p in pool]), vectors, k, float(diversity), self.items.mean)
            top = [pool[i] for i in order.tolist()]
        else:
            top = self.recommend_many([id_string(user_id, "user_id")], k, exclude_seen)[0]
        if not explain:
            return top
        return [(i, p, why) for (i, p), why in zip(top, self.explain(user_id, [i for i, _ in top]))]

    def explain(self, user_id, item_ids: Sequence, top: int = 3) -> list[list[Reason]]:
        """For each of ``item_ids``, the user's past events that most support it, best first (at most ``top``, only
        events that raise its score): :class:`~mmrec.serve.explain.Reason` with the event, its ``weight`` -- the drop
        in the item's logit when the event is left out of the history -- and, for text events, their keyphrases.
        One batched forward over the leave-one-out histories (:mod:`mmrec.serve.explain`); a user without readable
        events gets empty lists."""
        user = id_string(user_id, "user_id")
        user = self.id_key.pseudonym(user) if self.id_key else user
        rows = self._candidate_rows(item_ids)
        if not isinstance(top, numbers.Integral) or isinstance(top, bool) or top < 1:
            raise ValueError(f"top must be a positive integer, got {top!r}")
        with self._lock:  # the log, and event texts from the store's cache
            window, previous = explained_window(self.folder, self.store.user_events([user])[user])
            if not window:
                return [[] for _ in range(len(rows))]
            weights = leave_one_out(self.folder, self.model.scorer, window, previous, self.item_vectors[rows])
        return reasons(weights, window, int(top))

    def recommend_many(self, user_ids: Sequence, k: int = 10, exclude_seen: bool = True
                       ) -> list[list[tuple[str, float]]]:
        """:meth:`recommend` for every user of ``user_ids``, in one forward pass over the catalogue."""
        if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        users = self._user_ids(user_ids)
        interests = self.users.interests(users)
        seen = self.users.seen_rows(users) if exclude_seen else None
        return self._top(interests, seen, int(k))

    @torch.inference_mode()
    def _top(self, interests: torch.Tensor, seen: list[torch.Tensor] | None, k: int) -> list[list[tuple[str, float]]]:
        model, vectors, new = self.model, self.item_vectors, self._new_items
        depth = model.config.new_item_slot_depth
        slots = math.floor(model.new_items.slots * k / depth + 0.5)  # halves round up
        fetch = max(k, model.config.scorer.rerank)
        if self._ann is not None:
            found = self._ann.candidates(interests, float(model.new_items.bias), seen, fetch, slots, vectors)
            return self._ranked(interests, found, k, slots)
        dot = interests @ vectors.T + self._new_bias()  # (U, N)
        if seen:
            users = torch.cat([torch.full((len(s),), u, dtype=torch.long) for u, s in enumerate(seen)])
            dot[users.to(self.device), torch.cat(seen).to(self.device)] = float("-inf")
        if len(interests) == 1:  # one request: the same ranking over the few items it can come from
            candidates = exact_candidates(dot[0], new, self.items.new_rows, fetch, k, slots)
            if candidates is not None:
                return self._ranked(interests, [candidates], k, slots, [dot[0, candidates]])
        # the model's own re-ranking and new-item places: the order evaluation measures when k is the places' depth
        scores = model.place_new_items(model.rerank(interests, vectors, dot, new), new, slots, k)
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        probs = torch.sigmoid(model.scorer.logits(interests, vectors[top.indices])).cpu().numpy()
        rankable = torch.isfinite(top.values).cpu().numpy()
        ids = self.item_ids
        return [[(ids[i], float(p)) for i, p, ok in zip(row, prob, keep) if ok]
                for row, prob, keep in zip(top.indices.tolist(), probs, rankable)]

    def _ranked(self, interests: torch.Tensor, candidates: list[torch.Tensor], k: int, slots: int,
                dots: list[torch.Tensor] | None = None) -> list[list[tuple[str, float]]]:
        """:meth:`_top` over each user's ``candidates`` (rows): re-ranked and placed as the whole catalogue is."""
        model, out = self.model, []
        for u, rows in enumerate(candidates):
            rows = rows.to(self.device)
            interest, vectors, new = interests[u : u + 1], self.item_vectors[rows], self._new_items[rows]
            dot = interest @ vectors.T + self._new_bias()[rows] if dots is None else dots[u][None]  # (1, C)
            scores = model.place_new_items(model.rerank(interest, vectors, dot, new), new, slots, k)
            top = scores.topk(min(k, scores.shape[1]), dim=1).indices[0]
            probs = torch.sigmoid(model.scorer.logits(interest, vectors[top][None]))[0].cpu().tolist()
            out.append([(self.item_ids[i], p) for i, p in zip(rows[top].tolist(), probs)])
        return out

    def observe(self, user_id, item_id, event: str | None = None, timestamp: int | float | None = None,
                text: str | None = None) -> None:
        """Fold one event into the user's stored interest (one GRU step) and append it to their event log
        (:class:`StaleModelError` when the store was retrained since this model was loaded).

        ``event`` defaults to the training data's event (``"interaction"`` when it had no event column);
        ``timestamp`` defaults to now. An event not newer than the user's last one is placed in time order by
        recomputing that user from the log. Stepping carries the whole history in the GRU state, while a recompute
        (and evaluation) reads the last ``max_len`` events: for users with longer histories the two differ
        slightly. Calls from several threads at once are committed together, each returning once its event is."""
        user_id, item_id = id_string(user_id, "user_id"), id_string(item_id, "item_id")
        self._rows([item_id])
        name = self.event_names[self.rules.event_index(event)]
        ts = int(time.time()) if timestamp is None else unix_seconds(timestamp, "timestamp")
        row = (user_id, ts, item_id, name, clean_behaviour_texts([text])[0] if text else "")
        self.apply_events([row])

    def apply_events(self, rows: Sequence[tuple[str, int, str, str, str]]) -> dict[str, int]:
        """Apply ``(user_id, timestamp, item_id, event, text)`` rows: rows already in the log are skipped, users
        advance from their stored state (or are recomputed from the log when an event is not newer than their
        last one, so it takes its place in time order, or their state came from another model), and events +
        states commit in one transaction. Returns counts ``users``, ``applied``, ``duplicates``, ``recomputed``.

        Ids and timestamps are read by the same rules as every other entry point (ids stripped, integers as
        strings; timestamps as unix seconds). Raises ``KeyError`` / ``ValueError`` naming the first row with an
        unknown item or event or an unreadable id or timestamp, and :class:`StaleModelError` (writing nothing) when
        the store was retrained since this model was loaded."""
        return self._commits.submit(self.stored_rows(rows))

    def stored_rows(self, rows: Sequence[tuple]) -> list[tuple[str, int, str, str, str]]:
        """``rows`` as :meth:`apply_events` logs them: read by the model's rules (errors name the row), user ids
        as the store holds them (pseudonyms under the id key). :mod:`mmrec.distributed` logs rows through here."""
        rows = self.rules.prepare(rows)
        if self.id_key:
            rows = [(u, *rest) for u, (_, *rest) in zip(self.id_key.pseudonyms(r[0] for r in rows), rows)]
        return rows

    def _commit(self, batches: list[list[tuple]]) -> list[dict[str, int]]:
        """Apply the rows of ``batches`` (already prepared) in one transaction; counts per batch."""
        rows = [r for batch in batches for r in batch]
        # The write lock is taken before the log and the states are read: another process applying events for
        # the same user in between would otherwise be overwritten (lost) or folded in twice.
        with self._lock, self.store.transaction():
            version = self.users.sync()
            if version != self._checked_at:  # only another connection's commit (a retrain) can make this model stale
                self._check_current()
                self._checked_at = version
            users = list(dict.fromkeys(r[0] for r in rows))
            known = self.users.known(users)  # before this batch's events are inserted
            fresh_mask = self.store.insert_events(rows)
            by_user: dict[str, list[tuple]] = {}
            for (user_id, ts, item_id, event, text), fresh in zip(rows, fresh_mask):
                if fresh:
                    by_user.setdefault(user_id, []).append((ts, item_id, event, text))
            step_users, recompute = [], []
            for user_id, events in by_user.items():
                state, was_logged = known[user_id]
                if state is None and not was_logged:
                    step_users.append(user_id)  # brand-new user: start from the initial state
                elif (state is None or state.model != self.model_id
                      # an event in the same second as the last one may sort before it: recompute to be sure
                      or min(e[0] for e in events) <= (state.last_timestamp or 0)):
                    recompute.append(user_id)
                else:
                    step_users.append(user_id)
            updates = self.folder.step(self.model_id, step_users, by_user, {u: known[u][0] for u in step_users})
            self.store.put_users(updates)
            if recompute:
                self.folder.rebuild(self.model_id, recompute)
            self.users.put(users, updates)
        counts, start = [], 0
        recomputed = set(recompute)
        for batch in batches:
            part = fresh_mask[start : start + len(batch)]
            batch_users = set(r[0] for r in batch)
            counts.append({"users": len({r[0] for r, f in zip(batch, part) if f}), "applied": int(part.sum()),
                           "duplicates": int(len(batch) - part.sum()),
                           "recomputed": len(batch_users & recomputed)})
            start += len(batch)
        return counts

    def forget(self, user_ids: Sequence) -> dict:
        """Delete ``user_ids``' events, states and the cached texts only they had, leave no trace of them in the
        store's files, and keep them out of retraining (:func:`mmrec.forget.forget_users`; docs/privacy.md)."""
        with self._lock:
            report = forget_users(self.store, self._user_ids(user_ids, stored=False), id_key=self.id_key)
            self.users.clear()
        return report

    def rebuild(self, user_ids: Sequence[str] | None = None, batch_users: int = 512) -> int:
        """Recompute interests from each user's event log (the last ``max_len`` events, as in training), all
        users when ``user_ids`` is None (after a retrain). Logged events of items the store no longer holds or of
        event kinds the model was not trained on are skipped. Returns the number of users rebuilt; raises
        :class:`StaleModelError` (writing nothing) when the store was retrained since this model was loaded."""
        with self._lock, self.store.transaction():
            self._check_current()
            self.users.clear()
            ids = None if user_ids is None else self._user_ids(user_ids)
            return self.folder.rebuild(self.model_id, ids, batch_users)
