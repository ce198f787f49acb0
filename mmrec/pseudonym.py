"""Pseudonymised user ids: with an id key, a store never holds a raw user id.

Every entry point that takes user ids (``mmrec train`` / ``evaluate`` / ``refresh`` / ``forget`` / ``serve``, and
``Recommender``, ``train_store``, ``refresh_store``, ``forget_users`` in Python) replaces each id by its pseudonym,
``HMAC-SHA256(key, id)`` (the first 32 hex digits: 128 bits), before anything reaches the store; callers keep using
raw ids, and answers name the ids they were given. The key is a file (``--id-key FILE`` or the environment variable
``MMREC_ID_KEY=FILE``), never stored: the store keeps only its fingerprint (an HMAC of a fixed label), so opening a
pseudonymised store without a key, or with another key, is a clear error instead of silently treating every user as
new. What this protects against, and what it does not, is in docs/privacy.md.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .io.tables import TableSource, read_table
from .io.values import ids_or_empty
from .store import Store

__all__ = ["ENV_VAR", "FINGERPRINT_META", "IdKey", "IdKeyError", "MIN_KEY_BYTES", "bind_id_key", "pseudonymise_table",
           "record_fingerprint", "resolve_id_key"]

ENV_VAR = "MMREC_ID_KEY"
"""Environment variable naming the key file, used wherever no key is given explicitly."""
FINGERPRINT_META = "id_key_fingerprint"
"""The store's ``meta`` key holding the fingerprint of the key its user ids are pseudonymised with."""
MIN_KEY_BYTES = 16
"""Shortest key accepted (after stripping surrounding whitespace): 128 bits, so ids cannot be brute-forced."""
_FINGERPRINT_LABEL = b"mmrec id-key fingerprint v1"
_PSEUDONYM_HEX = 32


class IdKeyError(ValueError):
    """A key is missing, unreadable, too short, or not the store's."""


@dataclass(frozen=True)
class IdKey:
    """A secret that turns user ids into pseudonyms. Build with :meth:`read` (a key file) or from bytes.

    >>> key = IdKey(b"0123456789abcdef0123456789abcdef")
    >>> key.pseudonyms(["42", "42", "7"])   # ['a3…', 'a3…', '5f…']: equal ids, equal pseudonyms
    """

    secret: bytes = field(repr=False)
    source: str = field(default="the given key", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes):
            raise IdKeyError(f"id key {self.source}: expected bytes, got {type(self.secret).__name__}")
        if len(self.secret) < MIN_KEY_BYTES:
            raise IdKeyError(f"id key {self.source}: {len(self.secret)} bytes, need at least {MIN_KEY_BYTES} (make "
                             "one with: python -c \"import secrets; print(secrets.token_hex(32))\" > id.key)")

    @classmethod
    def read(cls, path: str | Path) -> IdKey:
        """The key in file ``path`` (its bytes, surrounding whitespace stripped, so a trailing newline does not
        change the key); :class:`IdKeyError` naming the file when it is missing, unreadable or too short."""
        path = Path(path)
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise IdKeyError(f"id key file {path}: {exc.strerror or exc}") from exc
        return cls(secret, str(path))

    @property
    def fingerprint(self) -> str:
        """What a store keeps to recognise the key (it cannot be turned back into the key)."""
        return hmac.new(self.secret, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:_PSEUDONYM_HEX]

    def pseudonym(self, user_id: str) -> str:
        return hmac.new(self.secret, user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:_PSEUDONYM_HEX]

    def pseudonyms(self, user_ids: Iterable[str]) -> list[str]:
        """Pseudonyms of ``user_ids`` in order; each distinct id is hashed once. An empty id stays empty, so the
        readers still reject it by name."""
        memo: dict[str, str] = {"": ""}
        return [memo[u] if u in memo else memo.setdefault(u, self.pseudonym(u)) for u in user_ids]


def resolve_id_key(id_key: IdKey | str | Path | bytes | None) -> IdKey | None:
    """``id_key`` as an :class:`IdKey`: a key, a key file's path, or the secret's bytes; ``None`` reads the file
    :data:`ENV_VAR` names (no key when it is unset or empty)."""
    if isinstance(id_key, IdKey):
        return id_key
    if isinstance(id_key, bytes):
        return IdKey(id_key)
    if id_key is None:
        named = os.environ.get(ENV_VAR, "").strip()
        return IdKey.read(named) if named else None
    if isinstance(id_key, (str, Path)):
        return IdKey.read(id_key)
    raise IdKeyError(f"id_key must be a key file's path, bytes or an IdKey, got {type(id_key).__name__}")


def _holds_users(store: Store) -> bool:
    return bool(store.db.execute(
        "SELECT EXISTS(SELECT 1 FROM events) OR EXISTS(SELECT 1 FROM users)").fetchone()[0])


def bind_id_key(store: Store, id_key: IdKey | str | Path | bytes | None, *, replacing_users: bool = False
                ) -> IdKey | None:
    """The key to read and write ``store``'s users with (``None``: raw ids), after checking it is the store's.

    A store whose users are pseudonymised needs its key: without one, or with another, :class:`IdKeyError`. A key
    given for a store of raw ids is an error too (its users would all look new), unless the store holds no users
    yet (the key's fingerprint is recorded now) or the caller replaces every user (``replacing_users``: training,
    which records the fingerprint with its install, :func:`record_fingerprint`)."""
    key = resolve_id_key(id_key)
    stored = store.get_meta(FINGERPRINT_META)
    how = f"give the key the store was made with: --id-key FILE, or {ENV_VAR}=FILE"
    if stored is not None and key is None:
        raise IdKeyError(f"store {store.path}: its user ids are pseudonymised (HMAC-SHA256) and no id key was "
                         f"given, so its users cannot be read; {how}")
    if stored is not None and key.fingerprint != stored:
        raise IdKeyError(f"store {store.path}: id key {key.source} is not the key its user ids were pseudonymised "
                         f"with (fingerprint {key.fingerprint}, store's {stored}); {how}")
    if stored is None and key is not None and not replacing_users:
        if _holds_users(store):
            raise IdKeyError(f"store {store.path} holds raw user ids, not pseudonyms: leave the id key out, or "
                             "pseudonymise them by retraining with it (`mmrec train --id-key FILE` replaces every "
                             "stored user)")
        record_fingerprint(store, key)
    return key


def record_fingerprint(store: Store, key: IdKey | None) -> None:
    """Mark ``store``'s user ids as pseudonymised with ``key`` (nothing for ``None``); inside the caller's
    transaction when one is open."""
    if key is not None:
        store.set_meta(FINGERPRINT_META, key.fingerprint)


def pseudonymise_table(source: TableSource | None, key: IdKey | None) -> TableSource | None:
    """``source`` (an events file or DataFrame) with its ``user_id`` column replaced by pseudonyms; unchanged
    without a key, or when it has no ``user_id`` column (the readers name it)."""
    if source is None or key is None:
        return source
    frame = read_table(source)
    if "user_id" not in frame.columns:
        return source
    frame = frame.copy()
    frame["user_id"] = key.pseudonyms(ids_or_empty(frame["user_id"], "user_id").tolist())
    return frame
