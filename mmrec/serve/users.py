"""Users as serving holds them: interests and seen items read through an in-memory cache, written through.

The cache answers repeated calls without SQL. It stays right across processes by one rule: before every use it
compares the store's ``data_version`` (an SQLite pragma that changes when *another* connection commits; a few
microseconds) with the one it was filled under, and starts over when they differ. A write this process commits
updates the cache itself (:meth:`UserCache.put`), so its own writes cost no reload.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..folding import EventFolder
from ..store import Store, UserState

__all__ = ["UserCache", "CachedUser", "MAX_CACHED_USERS"]

MAX_CACHED_USERS = 200_000
"""Users whose interest is held in memory at once (~1 KB each); the cache starts over when it is full."""


@dataclass
class CachedUser:
    """``interest (D,)`` for this model, the ``state`` stored for this model (``None``: none stored, or one of
    another model) and whether the user has logged events."""

    interest: torch.Tensor
    state: UserState | None
    logged: bool


class UserCache:
    """Interests ``(D,)`` and seen-item rows of users of one model, cached. Every method takes ``lock`` (shared
    with the :class:`~mmrec.serve.recommender.Recommender` that owns the store connection)."""

    def __init__(self, store: Store, folder: EventFolder, model_id: str, cold: torch.Tensor,
                 row: dict[str, int], interaction_events: Sequence[str], lock: threading.RLock) -> None:
        self.store, self.folder, self.model_id = store, folder, model_id
        self.cold = cold  # (D,) the learned initial interest: users the store has never seen
        self.row = row
        self.interaction_events = tuple(interaction_events)
        self.lock = lock
        self._users: dict[str, CachedUser] = {}
        self._seen: dict[str, torch.Tensor] = {}
        self._version = store.data_version()

    def sync(self) -> int:
        """Start over when another connection committed since the cache was filled; returns the store's
        ``data_version``."""
        with self.lock:
            version = self.store.data_version()
            if version != self._version or len(self._users) > MAX_CACHED_USERS:
                self.clear()
                self._version = version
            return version

    def clear(self) -> None:
        with self.lock:
            self._users.clear()
            self._seen.clear()

    def interests(self, user_ids: Sequence[str]) -> torch.Tensor:
        """``(U, D)`` interests of ``user_ids`` (unknown users: the cold-user interest)."""
        with self.lock:
            self.sync()
            missing = [u for u in dict.fromkeys(user_ids) if u not in self._users]
            if missing:
                self._fetch(missing)
            return torch.stack([self._users[u].interest for u in user_ids])

    def seen_rows(self, user_ids: Sequence[str]) -> list[torch.Tensor]:
        """Rows of the items in each user's interaction events (items the store no longer holds are left out)."""
        with self.lock:
            self.sync()
            for u in dict.fromkeys(user_ids):
                if u not in self._seen:
                    seen = self.store.seen_items(u, self.interaction_events)
                    self._seen[u] = torch.tensor(sorted(self.row[i] for i in seen if i in self.row),
                                                 dtype=torch.long)
            return [self._seen[u] for u in user_ids]

    def known(self, user_ids: Sequence[str]) -> dict[str, tuple[UserState | None, bool]]:
        """Each user's stored state (of any model; ``None``: none) and whether they have logged events: from the
        cache, else from the store. Call inside the write transaction, after :meth:`sync`."""
        with self.lock:
            uncached = [u for u in user_ids if u not in self._users]
            stored = self.store.get_users(uncached) if uncached else {}
            logged = self.store.logged_among(uncached) if uncached else set()
            return {u: ((self._users[u].state, self._users[u].logged) if u in self._users
                        else (stored.get(u), u in logged or u in stored)) for u in user_ids}

    def put(self, written: Sequence[str], states: Sequence[UserState]) -> None:
        """Inside the write transaction that wrote events of ``written`` users and the ``states`` it stepped: cache
        those states, drop the rest of ``written`` (recomputed in the store: read again when next asked)."""
        with self.lock:
            for u in written:
                self._seen.pop(u, None)
                self._users.pop(u, None)
            for s in states:
                self._users[s.user_id] = CachedUser(torch.from_numpy(s.interest).to(self.cold.device), s, True)

    def _fetch(self, user_ids: list[str]) -> None:
        """Read ``user_ids`` into the cache: the stored interest, or for a user whose state came from another model
        (or who is logged without one) a recompute from the log in memory, never written: reads do not write."""
        stored = self.store.get_users(user_ids)
        other = [u for u in user_ids if u not in stored or stored[u].model != self.model_id]
        logs = self.store.user_events(other) if other else {}
        recomputed = {s.user_id: s for s in self.folder.recompute(self.model_id, [u for u in other if logs[u]],
                                                                  logs)}
        device = self.cold.device
        for u in user_ids:
            state = stored.get(u)
            if state is not None and state.model == self.model_id:
                self._users[u] = CachedUser(torch.tensor(state.interest, device=device), state, True)
            elif u in recomputed:
                self._users[u] = CachedUser(torch.from_numpy(recomputed[u].interest).to(device), None, True)
            else:
                self._users[u] = CachedUser(self.cold, None, bool(logs.get(u)))
