"""Forgetting users: ``mmrec forget`` deletes a user's rows from a store and keeps them out of later runs.

:func:`forget_users` deletes, in one transaction (``BEGIN IMMEDIATE``, with SQLite's ``secure_delete`` on), each
user's event log rows, their stored state (GRU state + interest vector) and the cached vectors of their event texts
that no remaining event carries; it records a tombstone per user: an HMAC-SHA256 of the id under a random secret
kept in the store (never the id). After the commit, :func:`scrub_store` rebuilds the database file (``VACUUM``) and
empties its write-ahead log (``wal_checkpoint(TRUNCATE)``), so that no file of the store folder holds the deleted
bytes, not even in free pages, B-tree separator keys or old WAL frames.

The tombstones keep a forgotten user out of what reads input files into the store: ``train_store`` and
``evaluate_store`` drop their rows from the interactions and context events (:func:`without_forgotten`), and
``refresh_store`` rejects them (:func:`reject_forgotten`). What this does not reach, and what retraining costs, is in
docs/privacy.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .io.tables import TableSource, read_table
from .io.values import id_string, id_strings, ids_or_empty
from .pseudonym import IdKey, bind_id_key
from .store import Store

__all__ = ["FORGOTTEN_REASON", "forget_users", "forgotten_among", "read_users_file", "reject_forgotten",
           "scrub_store", "unforget_users", "without_forgotten"]

SECRET_KEY = "forget_secret"
"""The store's ``meta`` key holding the tombstones' HMAC secret (hex), made with the first tombstone."""
FORGOTTEN_REASON = "the user was forgotten (mmrec forget): their events are not applied"
"""``refresh_store``'s reason for rejecting a forgotten user's rows."""
TABLE_SUFFIXES = {".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".ndjson", ".json"}
"""A users file with one of these suffixes is a table with a ``user_id`` column; any other holds one id a line."""
MODEL_CONFIG = Path("model") / "config.json"
"""The trained model's meta (:mod:`mmrec.trained`), read here for the text encoders it was trained with only."""


def _user_ids(user_ids: Iterable) -> list[str]:
    if not isinstance(user_ids, Iterable) or isinstance(user_ids, (str, bytes)):
        raise ValueError(f"user_ids must be a list of user ids, got {user_ids!r}")
    return list(dict.fromkeys(id_string(u, f"user_ids[{n}]") for n, u in enumerate(user_ids)))


def _secret(store: Store, create: bool = False) -> bytes | None:
    """The store's tombstone secret (``create``: made now if absent; call inside the write transaction)."""
    value = store.get_meta(SECRET_KEY)
    if value is None and create:
        value = secrets.token_hex(32)
        store.set_meta(SECRET_KEY, value)
    return None if value is None else bytes.fromhex(value)


def _digest(secret: bytes, user_id: str) -> str:
    return hmac.new(secret, user_id.encode("utf-8"), hashlib.sha256).hexdigest()


def forgotten_among(store: Store, user_ids: Iterable[str], key: IdKey | None = None) -> set[str]:
    """Those of ``user_ids`` (id strings as the store spells them) that were forgotten and not unforgotten since.
    With the store's id key (:mod:`mmrec.pseudonym`) ids are raw: a user forgotten under their pseudonym, or
    under their raw id before the store was pseudonymised, is found either way."""
    secret = _secret(store)
    if secret is None:  # the store never forgot anyone
        return set()
    ids = [str(u) for u in user_ids]
    digests = {_digest(secret, u): u for u in ids}
    if key is not None:
        digests.update({_digest(secret, p): u for u, p in zip(ids, key.pseudonyms(ids))})
    return {digests[d] for d in store.tombstones(list(digests))}


def _text_versions(store: Store) -> list[str]:
    """Text-encoder versions event-text vectors may be cached under: the store's, and those the model trained with."""
    versions = list(store.encoders().get("text", []))
    try:
        versions += json.loads((store.path / MODEL_CONFIG).read_text())["encoders"].get("text", [])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no model (or an unreadable one): the store's versions alone
    return list(dict.fromkeys(versions))


def _cache_key(version: str, text: str) -> str:
    # the key mmrec.features.embed_event_texts caches a behaviour text's vector under
    return hashlib.sha256(f"{version}\0{text}".encode()).hexdigest()


def forget_users(store: str | Path | Store, user_ids: Iterable, *, scrub: bool = True,
                 id_key: IdKey | str | Path | None = None) -> dict:
    """Delete every trace of ``user_ids`` from ``store`` and record them as forgotten; returns a report.

    Deletes each user's events, stored state and the cached vectors of their event texts that no remaining event
    carries, and records a tombstone (an HMAC of the id, see the module docstring), in one transaction: the
    caller's when one is open (``store.transaction()``), else its own ``BEGIN IMMEDIATE``. ``secure_delete`` is on
    for the deletion and restored after. Then, with ``scrub`` and outside a caller's transaction,
    :func:`scrub_store` compacts the file and empties the WAL; inside one, nothing can be vacuumed: the report says
    ``"scrubbed": False`` and the caller calls :func:`scrub_store` after its commit.

    An id the store does not hold is no error: it is reported with ``forgotten: 0`` (and tombstoned all the same,
    so a retrain on a file that names it leaves it out). Ids are read as the store spells them (``7`` is ``"7"``).
    A pseudonymised store needs its ``id_key`` (:func:`mmrec.pseudonym.bind_id_key`; ``None``: ``MMREC_ID_KEY``):
    ids are given raw, deleted and tombstoned as pseudonyms, and reported raw.

    Report: ``users`` (per id: ``user_id``, ``events``, ``states``, ``texts`` deleted and ``forgotten``, their
    sum), ``forgotten`` (users who had rows), ``events``, ``states``, ``texts`` (totals), ``tombstones`` (ids
    recorded), ``scrubbed``, ``seconds``. Raises ``RuntimeError`` when the deletion committed but the scrub could
    not finish (another connection kept reading the old file): running the same call again completes it."""
    if not isinstance(store, Store):
        with Store(store, create=False) as opened:
            return forget_users(opened, user_ids, scrub=scrub, id_key=id_key)
    ids = _user_ids(user_ids)
    key = bind_id_key(store, id_key)
    stored_ids = key.pseudonyms(ids) if key else ids
    start = time.perf_counter()
    db = store.db
    secure = db.execute("PRAGMA secure_delete").fetchone()[0]
    db.execute("PRAGMA secure_delete=ON")
    try:
        with store.transaction():
            versions = _text_versions(store)
            users = []
            for user_id, stored in zip(ids, stored_ids):
                events, states, texts = store.delete_user(stored)
                users.append({"user_id": user_id, "events": events, "states": states, "texts": texts})
            for user in users:  # after every deletion: a text two forgotten users shared goes too
                keys = {text: [_cache_key(v, text) for v in versions] for text in user["texts"]}
                user["texts"] = store.uncache_unlogged(keys) if keys else 0
                user["forgotten"] = user["events"] + user["states"] + user["texts"]
            tombstones = 0
            if ids:  # a store that never forgot anyone keeps no secret (and its jobs read their files once)
                secret = _secret(store, create=True)
                tombstones = len(store.tombstones([_digest(secret, u) for u in stored_ids], put=True))
    finally:
        db.execute(f"PRAGMA secure_delete={int(secure)}")
    report = {"users": users, "forgotten": sum(1 for u in users if u["forgotten"]),
              **{key: sum(u[key] for u in users) for key in ("events", "states", "texts")},
              "tombstones": tombstones, "scrubbed": False}
    if scrub and not db.in_transaction:
        scrub_store(store)
        report["scrubbed"] = True
    report["seconds"] = round(time.perf_counter() - start, 3)
    return report


def scrub_store(store: Store) -> None:
    """Rebuild the database file without free pages (``VACUUM``, with ``secure_delete`` on) and empty its
    write-ahead log (``wal_checkpoint(TRUNCATE)``): deleted rows leave no bytes in ``mmrec.sqlite``, ``-wal`` or
    ``-shm``. Runs outside any transaction (``ValueError`` inside one); holds the write lock while it rebuilds.
    ``RuntimeError`` when another connection's read kept the log from being emptied (run it again)."""
    db = store.db
    if db.in_transaction:
        raise ValueError("scrub_store cannot run inside a transaction: call it after the commit")
    secure = db.execute("PRAGMA secure_delete").fetchone()[0]
    db.execute("PRAGMA secure_delete=ON")
    try:
        db.execute("VACUUM")
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        db.execute(f"PRAGMA secure_delete={int(secure)}")
    if busy:
        raise RuntimeError(
            f"{store.path}: the users' rows are deleted and committed, but another connection kept reading the old "
            "file, so its write-ahead log could not be emptied: run the same forget again when readers are idle")


def unforget_users(store: Store, user_ids: Iterable, id_key: IdKey | str | Path | None = None) -> int:
    """Remove the tombstones of ``user_ids`` (a returning user whose files may train again); returns how many there
    were. Their deleted rows stay deleted. ``id_key``: as :func:`forget_users`'s."""
    ids, secret = _user_ids(user_ids), _secret(store)
    if secret is None:
        return 0
    key = bind_id_key(store, id_key)
    digests = [_digest(secret, u) for u in ids] + ([_digest(secret, p) for p in key.pseudonyms(ids)] if key else [])
    with store.transaction():
        found = store.tombstones(digests)
        store.tombstones(digests, put=False)
    return len(found)


def without_forgotten(store: Store, source: TableSource | None, what: str = "events", key: IdKey | None = None
                      ) -> TableSource | None:
    """``source`` (an events file or DataFrame, ``None`` passes through, raw ids) without the rows of forgotten
    users, for ``train_store`` and ``evaluate_store``: unchanged when the store forgot none of its users, else the
    DataFrame of its other rows, with a warning naming the file and the count (never the ids). ``key``: the
    store's id key, as :func:`forgotten_among`."""
    if source is None or _secret(store) is None:
        return source
    frame = read_table(source)
    if "user_id" not in frame.columns:
        return source  # the readers name the missing column
    ids = ids_or_empty(frame["user_id"], "user_id")
    forgotten = forgotten_among(store, ids.unique().tolist(), key)
    if not forgotten:
        return source
    drop = ids.isin(forgotten).to_numpy()
    name = what if isinstance(source, pd.DataFrame) else source
    warnings.warn(f"{name}: skipped {int(drop.sum())} row(s) of {len(forgotten)} forgotten user(s) (mmrec forget)",
                  stacklevel=2)
    return frame[~drop].reset_index(drop=True)


def reject_forgotten(store: Store, table, rows: list[tuple], rejected: list[dict], key: IdKey | None = None
                     ) -> tuple[list[tuple], list[dict]]:
    """``refresh_store``'s rows and rejections (:func:`mmrec.serve.refresh.validate_events` of ``table``, an
    :class:`~mmrec.io.events.EventTable`) with the rows of forgotten users moved to the rejections, field
    ``user_id``, reason :data:`FORGOTTEN_REASON`. ``key``: the store's id key (rows hold raw ids)."""
    forgotten = forgotten_among(store, {row[0] for row in rows}, key)
    if not forgotten:
        return rows, rejected
    listed = {r["row"] for r in rejected}
    extra = [{"row": int(i) + 1, "user_id": table.user_id[i], "item_id": table.item_id[i], "field": "user_id",
              "reason": FORGOTTEN_REASON}
             for i in np.flatnonzero(np.isin(table.user_id, list(forgotten))) if int(i) + 1 not in listed]
    return ([row for row in rows if row[0] not in forgotten],
            sorted(rejected + extra, key=lambda r: r["row"]))


def read_users_file(path: str | Path) -> list[str]:
    """The user ids a ``--users-file`` names: a table (``.csv``, ``.tsv``, ``.parquet``, ``.jsonl``...) with a
    ``user_id`` column, or any other file with one id a line (blank lines, and a first line ``user_id``, skipped).
    ``ValueError`` naming the file when it is unreadable, lacks the column, has an empty id or names none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"users file {path}: {'is a folder, not a file' if path.is_dir() else 'no such file'}")
    if {s.lower() for s in path.suffixes} & TABLE_SUFFIXES:
        frame = read_table(path, id_columns=("user_id",))
        if "user_id" not in frame.columns:
            raise ValueError(f"users file {path}: no user_id column (columns: {list(frame.columns)})")
        try:
            ids = id_strings(frame["user_id"], "user_id").tolist()
        except ValueError as exc:
            raise ValueError(f"users file {path}: {exc}") from None
    else:
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
        except UnicodeDecodeError:
            raise ValueError(f"users file {path}: not UTF-8 text (one user id a line)") from None
        ids = [line for n, line in enumerate(lines) if line and not (n == 0 and line == "user_id")]
    if not ids:
        raise ValueError(f"users file {path}: names no user ids")
    return ids
