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

Cold users: a user id the store has never seen is scored from the learned initial state, i.e. the interest the
model assigns before any event (close to "what new users engage with first"), and gets a stored state from their
first observed event on. Items embedded after training have no learned ID and are represented by their content.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..encoders.preprocess import clean_behaviour_texts
from ..folding import EventFolder
from ..io.values import id_string, unix_seconds
from ..store import StaleModelError, Store, UserState
from ..trained import MODEL_DIR, TrainedModel, check_encoders, model_device

__all__ = ["Recommender", "Event", "StaleModelError"]

#: ``(item_id, event, timestamp)`` or ``(item_id, event, timestamp, text)``.
Event = tuple


class Recommender:
    """A trained model bound to its store. Build with :meth:`load`."""

    def __init__(self, store: Store, trained: TrainedModel, device: torch.device,
                 generation: int | None = None) -> None:
        self.store = store
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
        self.item_ids: list[str] = store.item_ids()
        self._item_index = pd.Index(self.item_ids)
        features = trained.item_features(store, self.item_ids)
        with torch.no_grad():
            self.item_vectors = self.model.item_vectors(features.to(device))  # (N, D)
        # Items the model never trained on are ranked by the validation-chosen policy, as in evaluation.
        self._new_items = (~features.known).to(device)  # (N,) bool
        self.folder = EventFolder(store, self.model, self.item_ids, self.item_vectors, self.event_names, device)

    # -- loading -----------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, store: str | Path | Store, device: str = "auto") -> Recommender:
        """Open ``store`` and its trained model. Raises :class:`~mmrec.trained.ModelLoadError` when there is no
        model or the store's features were made by other encoders than the ones the model was trained on, and
        ``ValueError`` naming ``device`` when it is no device of this machine."""
        torch_device = model_device(device)
        store = store if isinstance(store, Store) else Store(store, create=False)
        for _ in range(10):
            # the generation is read before the files: a retrain committing in between makes this load stale (its
            # writes are refused), never a superseded model current
            generation, current = store.current_model()
            trained = TrainedModel.load(store.path / MODEL_DIR)
            if current in (None, trained.model_id):
                break
            time.sleep(0.1)  # the files are newer than the store: a retrain is about to commit
        check_encoders(trained, store.encoders())
        return cls(store, trained, torch_device, generation)

    def is_current(self) -> bool:
        """Whether this model is still the store's current one (no retrain since it was loaded)."""
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
    def _item_positions(self, item_ids: Iterable) -> torch.Tensor:
        ids = [id_string(i, "item id") for i in item_ids]
        position = self.folder.position
        unknown = [i for i in ids if i not in position]
        if unknown:
            raise KeyError(f"unknown item id(s) {unknown[:10]}: not in the store (embed them first)")
        return torch.tensor([position[i] for i in ids], dtype=torch.long, device=self.device)

    def _event_index(self, event: str | None) -> int:
        event = self.default_event if event is None else str(event)
        if event not in self.event_names:
            raise ValueError(f"unknown event {event!r}; known events: {list(self.event_names)}")
        return self.event_names.index(event)

    def _user_interest(self, user_id: str) -> torch.Tensor:
        """The stored interest of ``user_id``; a state from another model (or a logged user without one) is
        recomputed from the log in memory, never written: reads do not write."""
        state = self.store.get_users([user_id]).get(user_id)
        if state is None or state.model != self.model_id:
            recomputed = self.folder.recompute(self.model_id, [user_id])
            if not recomputed:
                with torch.no_grad():
                    h = self.model.interest_model.initial(1)
                    return self.model.interest_model.interest(h)[0]
            state = recomputed[0]
        return torch.from_numpy(state.interest.copy()).to(self.device)

    def _history_interest(self, history: Sequence[Event]) -> torch.Tensor:
        rows = []
        for n, event in enumerate(history):
            if not isinstance(event, (tuple, list)) or len(event) not in (3, 4):
                raise ValueError(f"history[{n}] must be (item_id, event, timestamp[, text]), got {event!r}")
            item_id, name = id_string(event[0], f"history[{n}] item_id"), event[1]
            ts = unix_seconds(event[2], f"history[{n}] timestamp")
            self._item_positions([item_id])
            self._event_index(name)
            text = event[3] if len(event) == 4 and isinstance(event[3], str) else ""  # None/NaN: no text
            rows.append((ts, item_id, name or self.default_event, text))
        # cleaned as `observe` and training clean event texts; presence is judged on the cleaned text
        texts = clean_behaviour_texts([r[3] for r in rows])
        for n, (row, text) in enumerate(zip(rows, texts)):
            problem = self._text_problem(row[2], text)
            if problem:
                raise ValueError(f"history[{n}]: {problem}")
        window, previous = self.folder.window(self.folder.sorted([(*r[:3], t) for r, t in zip(rows, texts)]))
        if not window:
            with torch.no_grad():
                return self.model.interest_model.interest(self.model.interest_model.initial(1))[0]
        _, interest = self.folder.advance([window], None, [previous])
        return interest[0]

    # -- public API --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, user_id=None, item_ids: Sequence | None = None, *, history: Sequence[Event] | None = None
              ) -> np.ndarray:
        """Probability ``(len(item_ids),) float32`` in [0, 1] that the user engages with each item, in the given
        order. Give either a stored ``user_id`` (unknown users get the cold-user fallback) or a ``history`` of
        ``(item_id, event, timestamp)`` for a user the store has never seen. Ids are strings or integers."""
        if not isinstance(item_ids, Iterable) or isinstance(item_ids, (str, bytes)):
            raise ValueError(f"item_ids must be a list of item ids, got {item_ids!r}")
        if (user_id is None) == (history is None):
            raise ValueError("give exactly one of user_id or history")
        items = self._item_positions(item_ids)
        if history is None:
            interest = self._user_interest(id_string(user_id, "user_id"))
        else:
            interest = self._history_interest(history)
        if len(items) == 0:
            return np.zeros(0, np.float32)
        probs = self.model.scorer.probability(interest[None], self.item_vectors[items][None])[0]
        return probs.float().cpu().numpy()

    @torch.no_grad()
    def recommend(self, user_id, k: int = 10, exclude_seen: bool = True) -> list[tuple[str, float]]:
        """Top ``k`` ``(item_id, probability)`` over the whole catalogue, in the order evaluation measures: exact
        dot-product retrieval, then the MLP scorer re-ranks the best ``rerank`` (``ScorerConfig``; 0 = dot product
        alone) and any further ones follow in dot-product order. Probabilities are the scorer's. ``exclude_seen``
        leaves out the items of the user's interaction events (the kinds training predicted); an item the user only
        tagged stays rankable, as in evaluation. A model whose ``NewItemPolicy`` has ``slots`` gives the last
        places of the list to the best new items, as many as it reserves in ``new_item_slot_depth`` places scaled
        to ``k`` (halves rounded up: 6 of 20 are 3 of 10, 5 of 20 are 3 of 10); evaluation measured the lists of
        ``new_item_slot_depth``."""
        if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        user_id = id_string(user_id, "user_id")
        interest = self._user_interest(user_id)
        dot = self.item_vectors @ interest + self.model.new_items.bias * self._new_items.float()  # (N,)
        if exclude_seen:
            seen = self.store.seen_items(user_id, self.interaction_events)
            if seen:
                dot[self._item_positions(seen & self.folder.position.keys())] = float("-inf")
        # the model's own re-ranking and new-item places: the order evaluation measures when k is the places' depth
        scores = self.model.rerank(interest[None], self.item_vectors, dot[None], self._new_items)
        depth = self.model.config.new_item_slot_depth
        slots = math.floor(self.model.new_items.slots * k / depth + 0.5)  # halves round up
        scores = self.model.place_new_items(scores, self._new_items, slots, k)[0]
        top = scores.topk(min(k, int(torch.isfinite(scores).sum()))).indices
        probs = torch.sigmoid(self.model.scorer.logits(interest[None], self.item_vectors[top][None])[0])
        return [(self.item_ids[int(i)], float(p)) for i, p in zip(top, probs)]

    def observe(self, user_id, item_id, event: str | None = None, timestamp: int | float | None = None,
                text: str | None = None) -> None:
        """Fold one event into the user's stored interest (one GRU step) and append it to their event log
        (:class:`StaleModelError` when the store was retrained since this model was loaded).

        ``event`` defaults to the training data's event (``"interaction"`` when it had no event column);
        ``timestamp`` defaults to now. An event not newer than the user's last one is placed in time order by
        recomputing that user from the log. Stepping carries the whole history in the GRU state, while a recompute
        (and evaluation) reads the last ``max_len`` events: for users with longer histories the two differ
        slightly."""
        user_id, item_id = id_string(user_id, "user_id"), id_string(item_id, "item_id")
        self._item_positions([item_id])
        name = self.event_names[self._event_index(event)]
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
        self._check_rows(rows)
        rows = [(id_string(u, f"rows[{n}] user_id"), unix_seconds(ts, f"rows[{n}] timestamp"),
                 id_string(item, f"rows[{n}] item_id"), event, text)
                for n, (u, ts, item, event, text) in enumerate(rows)]
        # The write lock is taken before the log and the states are read: another process applying events for
        # the same user in between would otherwise be overwritten (lost) or folded in twice.
        with self.store.transaction():
            self._check_current()
            fresh_mask = self.store.new_events(rows)
            fresh = list(dict.fromkeys(r for r, f in zip(rows, fresh_mask) if f))
            by_user: dict[str, list[tuple]] = {}
            for user_id, ts, item_id, event, text in fresh:
                by_user.setdefault(user_id, []).append((ts, item_id, event, text))
            stored = self.store.get_users(list(by_user))
            logged = self.store.user_events([u for u in by_user if u not in stored])
            step_users, recompute = [], []
            for user_id, events in by_user.items():
                state = stored.get(user_id)
                if state is None and not logged[user_id]:
                    step_users.append(user_id)  # brand-new user: start from the initial state
                elif (state is None or state.model != self.model_id
                      # an event in the same second as the last one may sort before it: recompute to be sure
                      or min(e[0] for e in events) <= (state.last_timestamp or 0)):
                    recompute.append(user_id)
                else:
                    step_users.append(user_id)
            self.store.add_events(fresh)
            updates = []
            if step_users:
                seqs = [self.folder.sorted(by_user[u]) for u in step_users]
                starts = [stored.get(u) for u in step_users]
                init = self.model.interest_model.initial(len(step_users)).detach().clone()
                for i, s in enumerate(starts):
                    if s is not None:
                        init[i] = torch.from_numpy(s.state.copy())
                h, interest = self.folder.advance(seqs, init.to(self.device),
                                                  [s.last_timestamp if s else None for s in starts])
                for i, u in enumerate(step_users):
                    n_before = starts[i].n_events if starts[i] else 0
                    updates.append(UserState(u, self.model_id, h[i].cpu().numpy(), interest[i].cpu().numpy(),
                                             seqs[i][-1][0], n_before + len(seqs[i])))
            self.store.put_users(updates)
            if recompute:
                self.folder.rebuild(self.model_id, recompute)
        return {"users": len(by_user), "applied": len(fresh), "duplicates": len(rows) - len(fresh),
                "recomputed": len(recompute)}

    def _check_rows(self, rows: Sequence[tuple]) -> None:
        """The first row (0-based) whose item or event the model cannot fold in is an error naming it."""
        if not rows:
            return
        bad_shape = next((n for n, r in enumerate(rows) if not isinstance(r, (tuple, list)) or len(r) != 5), None)
        if bad_shape is not None:
            raise ValueError(f"rows[{bad_shape}] must be (user_id, timestamp, item_id, event, text), "
                             f"got {rows[bad_shape]!r}")
        items = self._item_index.get_indexer([r[2].strip() if isinstance(r[2], str) else r[2] for r in rows])
        if (items < 0).any():
            n = int(np.argmax(items < 0))
            raise KeyError(f"rows[{n}]: unknown item id {rows[n][2]!r}: not in the store (embed it first)")
        events = pd.Index(self.event_names).get_indexer([r[3] for r in rows])
        if (events < 0).any():
            n = int(np.argmax(events < 0))
            raise ValueError(f"rows[{n}]: unknown event {rows[n][3]!r}; known events: {list(self.event_names)}")
        # a text event must carry text and no other event may: one vectorised pass, the first offender is named
        mismatched = np.isin(events, [self.folder.event_rank[e] for e in self.text_events]) != np.array(
            [bool(r[4]) for r in rows])
        if mismatched.any():
            n = int(np.argmax(mismatched))
            raise ValueError(f"rows[{n}]: {self._text_problem(rows[n][3], rows[n][4])}")

    def _text_problem(self, event: str, text: str) -> str:
        """Why an ``event`` with (cleaned) ``text`` cannot be read as training read events, or ``""``."""
        if event in self.text_events and not text:
            return (f"the model reads {event!r} events by their text and this one has none (training skips such "
                    "events)")
        if event not in self.text_events and text:
            carriers = (f"only {list(self.text_events)} events carry text" if self.text_events
                        else "the model was trained without text events")
            return f"{event!r} events carry no text in training ({carriers})"
        return ""

    def rebuild(self, user_ids: Sequence[str] | None = None, batch_users: int = 512) -> int:
        """Recompute interests from each user's event log (the last ``max_len`` events, as in training), all
        users when ``user_ids`` is None (after a retrain). Logged events of items the store no longer holds or of
        event kinds the model was not trained on are skipped. Returns the number of users rebuilt; raises
        :class:`StaleModelError` (writing nothing) when the store was retrained since this model was loaded."""
        with self.store.transaction():
            self._check_current()
            return self.folder.rebuild(self.model_id, user_ids, batch_users)
