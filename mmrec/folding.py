"""Folding events into user states: the GRU pass that turns event-log rows into interest vectors.

Training writes every user's first state through here and serving advances and rebuilds them through here, so a
state means the same whoever wrote it. Events are ordered as training orders them
(:func:`mmrec.data.behaviour.build_behaviour`): timestamp, interactions before text events, then item id, text and
event; a rebuild reads the last ``max_len`` events, as training and evaluation do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .data.batch import NO_TEXT, SequenceBatch, gap_buckets
from .features import embed_event_texts
from .networks.model import MultimodalRecommender
from .store import Store, UserState

__all__ = ["EventFolder", "LogEvent"]

LogEvent = tuple
"""``(timestamp, item_id, event, text)``: one event of a user's log (``text`` ``""`` for events without one)."""


class EventFolder:
    """Folds users' events into states of ``network`` over the items ``item_ids`` with vectors ``item_vectors (N,
    D)`` (on ``device``); ``event_names`` is the model's event vocabulary.

    Example::

        folder = EventFolder(store, network, item_ids, vectors, event_names, torch.device("cpu"))
        states, interests = folder.advance([[(1700000000, "260", "interaction", "")]], None, [None])
    """

    def __init__(self, store: Store, network: MultimodalRecommender, item_ids: Sequence[str],
                 item_vectors: torch.Tensor, event_names: Sequence[str], device: torch.device,
                 position: dict[str, int] | None = None) -> None:
        self.store = store
        self.network = network
        self.item_ids = list(item_ids)
        self.item_vectors = item_vectors
        self.event_names = tuple(event_names)
        self.device = device
        self.max_len = network.config.max_len
        self.n_gap_buckets = network.config.interest.n_gap_buckets
        #: item id -> row of ``item_vectors`` (``position``: a caller's map of the same ids, shared)
        self.position = position if position is not None else {item_id: i for i, item_id in enumerate(self.item_ids)}
        self.event_rank = {name: i for i, name in enumerate(self.event_names)}
        self._text_encoder = None

    def text_vectors(self, texts: list[str]) -> np.ndarray:
        """``(T, width)`` vectors of behaviour texts from the store's cache; the text encoder is loaded only for a
        text not cached yet (training cached every text it read)."""
        if self._text_encoder is None:
            try:
                return embed_event_texts(self.store, texts, encode_missing=False)
            except LookupError:
                from .features import store_text_encoder  # int8 for a store embedded with int8

                self._text_encoder = store_text_encoder(self.store)
        return embed_event_texts(self.store, texts, self._text_encoder)

    def batch(self, sequences: Sequence[list[LogEvent]], previous: Sequence[int | None]
              ) -> tuple[SequenceBatch, torch.Tensor]:
        """Pad per-user event lists into a batch and its text table; gaps of each first event are measured from
        ``previous`` (the user's last folded-in timestamp, if any). Events must name known items and events."""
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        b, width = len(sequences), max(int(lengths.max(initial=0)), 1)
        flat = [event for rows in sequences for event in rows]
        position, rank = self.position, self.event_rank
        stamps_flat = np.array([e[0] for e in flat], dtype=np.int64)
        items_flat = np.array([position[e[1]] for e in flat], dtype=np.int64)
        events_flat = np.array([rank[e[2]] for e in flat], dtype=np.int64)
        codes = {t: n for n, t in enumerate(dict.fromkeys(e[3] for e in flat if e[3]))}
        unique_texts = list(codes)
        text_codes = np.array([codes.get(e[3], NO_TEXT) for e in flat], dtype=np.int64)
        row = np.repeat(np.arange(b), lengths)
        col = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        items = np.full((b, width), len(self.item_ids), np.int64)
        events = np.zeros((b, width), np.int64)
        stamps = np.zeros((b, width), np.int64)
        texts = np.full((b, width), NO_TEXT, np.int64)
        items[row, col], events[row, col], stamps[row, col] = items_flat, events_flat, stamps_flat
        texts[row, col] = text_codes
        known_previous = np.array([p is not None for p in previous])
        prev = np.array([p if p is not None else 0 for p in previous], np.int64)
        first_gap = np.where(known_previous, stamps[:, 0] - prev, 0)
        gaps = gap_buckets(np.concatenate([first_gap[:, None], np.diff(stamps, axis=1)], axis=1), self.n_gap_buckets)
        table = torch.from_numpy(self.text_vectors(unique_texts)) if unique_texts else torch.zeros(0, 0)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        batch = SequenceBatch(items=t(items), events=t(events), gaps=t(gaps), texts=t(texts), lengths=t(lengths),
                              users=t(np.arange(b)), n_items=len(self.item_ids))
        return batch, table.to(self.device)

    @torch.no_grad()
    def advance(self, sequences: Sequence[list[LogEvent]], states: torch.Tensor | None,
                previous: Sequence[int | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold each user's events into its state, all users at once: ``B`` event lists + states ``(B, H)``
        (``None``: from the initial state) -> new states ``(B, H)`` and interests ``(B, D)``."""
        batch, table = self.batch(sequences, previous)
        _, last = self.network.states(batch, self.item_vectors, states, table)
        return last, self.network.interest_model.interest(last)

    @torch.inference_mode()
    def step(self, model_id: str, user_ids: Sequence[str], events: dict[str, list[LogEvent]],
             starts: dict[str, UserState | None]) -> list[UserState]:
        """One GRU pass over the new ``events`` of ``user_ids`` from ``starts`` (their stored states; ``None``: the
        initial state), stamped with ``model_id``, without writing anything: ``B`` users -> ``B`` states."""
        if not user_ids:
            return []
        seqs = [self.sorted(events[u]) for u in user_ids]
        initial = self.network.interest_model.initial_state.detach().cpu().numpy()
        init = torch.from_numpy(np.stack([starts[u].state if starts[u] is not None else initial for u in user_ids]))
        previous = [starts[u].last_timestamp if starts[u] else None for u in user_ids]
        if all(len(s) == 1 for s in seqs):  # one new event each, as observe brings: one GRU cell step, no padding
            h = self._step_one([s[0] for s in seqs], init.to(self.device), previous)
            interest = self.network.interest_model.interest(h)
        else:
            h, interest = self.advance(seqs, init.to(self.device), previous)
        h, interest = h.cpu().numpy(), interest.cpu().numpy()
        return [UserState(u, model_id, h[i], interest[i], seqs[i][-1][0],
                          (starts[u].n_events if starts[u] else 0) + len(seqs[i]))
                for i, u in enumerate(user_ids)]

    def _step_one(self, events: Sequence[LogEvent], states: torch.Tensor, previous: Sequence[int | None]
                  ) -> torch.Tensor:
        """:meth:`advance` for exactly one event per user, without building a padded batch: ``B`` events and states
        ``(B, H)`` -> new states ``(B, H)``; gaps measured from ``previous``, as :meth:`batch` measures them. Runs
        under :meth:`step`'s inference mode."""
        stamps = np.array([e[0] for e in events], dtype=np.int64)
        known = np.array([p is not None for p in previous])
        before = np.array([p if p is not None else 0 for p in previous], dtype=np.int64)
        gaps = gap_buckets(np.where(known, stamps - before, 0), self.n_gap_buckets)
        codes = {t: n for n, t in enumerate(dict.fromkeys(e[3] for e in events if e[3]))}
        table = torch.from_numpy(self.text_vectors(list(codes))).to(self.device) if codes else torch.zeros(0, 0)
        index = lambda values: torch.tensor(values, dtype=torch.long, device=self.device)  # noqa: E731
        inputs = self.network.step_inputs(
            self.item_vectors, index([self.position[e[1]] for e in events]),
            index([self.event_rank[e[2]] for e in events]), torch.from_numpy(gaps).to(self.device),
            index([codes.get(e[3], NO_TEXT) for e in events]), table)  # (B, D)
        return self.network.interest_model.step(inputs, states)

    def sorted(self, rows: Iterable[LogEvent]) -> list[LogEvent]:
        """``rows`` in training's time order: timestamp, interactions before text events, then item id, text and
        event."""
        # the positions follow the store's id order, which is the split's order for any two ids
        return sorted(rows, key=lambda r: (r[0], r[3] != "", self.position.get(r[1], 0), r[3],
                                           self.event_rank.get(r[2], 0)))

    def window(self, rows: list[LogEvent]) -> tuple[list[LogEvent], int | None]:
        """The last ``max_len`` of time-ordered events, and the timestamp of the event before them (``None`` when
        there is none): training measures the first event's time gap from it, not from nothing."""
        window = rows[-self.max_len :]
        return window, rows[-self.max_len - 1][0] if len(rows) > self.max_len else None

    def recompute(self, model_id: str, user_ids: Sequence[str], logs: dict[str, list[tuple]] | None = None
                  ) -> list[UserState]:
        """States of ``user_ids`` computed from their logged events (the last ``max_len``, as in training), stamped
        with ``model_id``, without writing anything; users with no readable logged event are absent. Logged events
        of items the store no longer holds or of event kinds the model was not trained on are skipped (a log from
        an earlier model trained with tags, say). ``logs``: the users' logs when the caller has read them."""
        logs = self.store.user_events(list(user_ids)) if logs is None else {u: logs[u] for u in user_ids}
        chunk = [u for u in logs if logs[u]]
        if not chunk:
            return []
        readable = [[r for r in logs[u] if r[1] in self.position and r[2] in self.event_rank] for u in chunk]
        windows = [self.window(self.sorted(events)) for events in readable]
        seqs = [w for w, _ in windows]
        h, interest = self.advance(seqs, None, [previous for _, previous in windows])
        return [UserState(u, model_id, h[i].cpu().numpy(), interest[i].cpu().numpy(),
                          seqs[i][-1][0] if seqs[i] else None, len(readable[i]))
                for i, u in enumerate(chunk)]

    def rebuild(self, model_id: str, user_ids: Sequence[str] | None = None, batch_users: int = 512) -> int:
        """Recompute interests from each user's event log (:meth:`recompute`), all logged users when ``user_ids``
        is None, and store them stamped with ``model_id``, in one transaction. Returns the number of users
        rebuilt."""
        ids = self.store.logged_users() if user_ids is None else list(dict.fromkeys(str(u) for u in user_ids))
        rebuilt = 0
        with self.store.transaction():
            for start in range(0, len(ids), batch_users):
                # one batch of logs in memory at a time: a full rebuild never holds the whole event log
                states = self.recompute(model_id, ids[start : start + batch_users])
                self.store.put_users(states)
                rebuilt += len(states)
        return rebuilt
