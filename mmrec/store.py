"""The embedded store: one SQLite file in a folder, holding everything the engine computes.

``STORE_DIR/mmrec.sqlite`` keeps catalogue items (their cleaned text, image reference and content hashes) and their
encoder features per modality, stamped with the encoder version that produced them. Later stages add item vectors,
user interest vectors and event logs to the same file, and model weights as safetensors beside it.

Every write happens inside one SQLite transaction (WAL journal), so a process killed at any moment leaves each
previously committed item intact; an interrupted batch is simply absent and is redone by the next run.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .io.values import sort_ids

__all__ = ["Store", "UserState", "StaleModelError", "MODALITIES", "DURABILITY"]

MODALITIES = ("text", "image")
DURABILITY = {"normal": "NORMAL", "full": "FULL"}
"""``durability`` -> SQLite ``synchronous`` in WAL mode. ``normal``: a commit survives a crash of the process (no
corruption, no loss), a power cut may lose the last commits; ``full``: each commit reaches the disk (fsync)
before it returns."""
DB_NAME = "mmrec.sqlite"
SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    image_ref TEXT,
    text_hash TEXT,
    image_hash TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS features (
    item_id TEXT NOT NULL REFERENCES items(item_id) ON DELETE CASCADE,
    modality TEXT NOT NULL,
    encoder TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (item_id, modality)
);
CREATE TABLE IF NOT EXISTS item_vectors (
    item_id TEXT PRIMARY KEY, model TEXT NOT NULL, vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    state BLOB NOT NULL,
    interest BLOB NOT NULL,
    last_timestamp INTEGER,
    n_events INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    user_id TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    event TEXT NOT NULL,
    text TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (user_id, timestamp, item_id, event, text)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS text_cache (key TEXT PRIMARY KEY, vector BLOB NOT NULL);
"""
_TABLES = set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", _SCHEMA))


class StaleModelError(ValueError):
    """A process holds a model that is no longer the store's current one (the store was retrained since it loaded,
    or the model files and the store disagree): it must not write user states. ``Recommender.load`` the store
    again."""


@dataclass(frozen=True)
class UserState:
    """A user's stored GRU state ``(H,)`` and interest vector ``(D,)``, the model that made them, and the time and
    count of the events folded in."""

    user_id: str
    model: str
    state: np.ndarray
    interest: np.ndarray
    last_timestamp: int | None
    n_events: int


def _blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


class Store:
    """A store folder. Opening creates it (and its schema) when absent. ``durability`` is how far a commit has
    reached when it returns (:data:`DURABILITY`).

    The connection may be used from any thread, one at a time: callers that share a ``Store`` between threads
    serialise their calls (``Recommender`` does, with its lock).

    Example::

        >>> store = Store("stores/ml")
        >>> ids, text, present = store.feature_matrix("text")   # (N,), (N, 384) float32, (N,) bool
        >>> ids, image, present = store.feature_matrix("image") # (N, 1280), or (N, 0) when no image is stored
    """

    def __init__(self, path: str | Path, create: bool = True, durability: str = "normal") -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability={durability!r}: use one of {sorted(DURABILITY)}")
        self.path = Path(path)
        self.durability = durability
        if not create and not (self.path / DB_NAME).is_file():
            raise FileNotFoundError(f"no mmrec store at {self.path} (expected {DB_NAME} inside)")
        self.path.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (see `transaction`), never implicit half-batches.
        self._db = sqlite3.connect(self.path / DB_NAME, isolation_level=None, timeout=30.0, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={DURABILITY[durability]}")
            self._db.execute("PRAGMA foreign_keys=ON")
            tables = {name for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
            self._db.close()
            raise ValueError(f"{self.path / DB_NAME} is not a readable mmrec store database ({exc}); restore it "
                             "or rebuild the store with `mmrec embed`") from exc
        if not _TABLES <= tables:
            # Only a store missing tables is written to on opening: the schema set-up takes the write lock, and a
            # reader must not wait behind a long write (a full `refresh --rebuild`) just to open the store.
            with self.transaction():
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self._db.execute(statement)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        found = self.get_meta("schema_version")
        if found != SCHEMA_VERSION:
            raise ValueError(f"store {self.path} has schema version {found}, this mmrec reads {SCHEMA_VERSION}")

    # -- plumbing -------------------------------------------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        return self._db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All writes inside commit together or not at all (``BEGIN IMMEDIATE`` takes the write lock up front)."""
        if self._db.in_transaction:
            yield self._db
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def data_version(self) -> int:
        """A number that changes whenever another connection (another process, or another ``Store`` of this
        folder) commits: a cache of what this connection read is current while it is unchanged. This connection's
        own commits leave it unchanged."""
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def current_model(self) -> tuple[int, str | None]:
        """``(generation, model_id)`` of the model :meth:`install_model` made current last: ``(0, None)`` for a
        store never trained, or trained before the generation was recorded."""
        rows = dict(self._db.execute("SELECT key, value FROM meta WHERE key IN ('model_generation', 'model_id')"))
        return int(rows.get("model_generation", 0)), rows.get("model_id")

    def install_model(self, model_id: str) -> int:
        """Make ``model_id`` the store's current model, a new generation (returned). Training calls this in the
        transaction that writes the model's event log and user states; processes that loaded an earlier
        generation are refused writes from then on (:class:`StaleModelError`)."""
        with self.transaction() as db:
            generation = self.current_model()[0] + 1
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                           [("model_generation", str(generation)), ("model_id", model_id)])
        return generation

    # -- catalogue items ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def item_hashes(self) -> dict[str, tuple[str | None, str | None]]:
        """``item_id -> (text_hash, image_hash)`` for every stored item (what the embedder compares against)."""
        return {row[0]: (row[1], row[2]) for row in self._db.execute("SELECT item_id, text_hash, image_hash FROM items")}

    def put_items(self, rows: Sequence[dict]) -> None:
        """Insert or replace items with their features, all in one transaction.

        Each row: ``item_id, title, text, image_ref, text_hash, image_hash`` and ``features``: a dict
        ``modality -> (encoder_version, vector)``. Modalities absent from ``features`` are deleted for that item, so
        a row describes the item's complete stored state: to keep a modality, pass its stored features (from
        :meth:`features_for`) and hash back in.
        """
        now = time.time()
        with self.transaction() as db:
            for row in rows:
                db.execute(
                    "INSERT OR REPLACE INTO items (item_id, title, text, image_ref, text_hash, image_hash, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (row["item_id"], row["title"], row["text"], row["image_ref"], row["text_hash"],
                     row["image_hash"], now),
                )
                db.execute("DELETE FROM features WHERE item_id = ?", (row["item_id"],))
                # the item vector was fused from the features replaced here: it is recomputed from the new ones
                db.execute("DELETE FROM item_vectors WHERE item_id = ?", (row["item_id"],))
                db.executemany(
                    "INSERT INTO features (item_id, modality, encoder, vector) VALUES (?, ?, ?, ?)",
                    [(row["item_id"], m, enc, _blob(v)) for m, (enc, v) in row["features"].items()],
                )

    def item_ids(self) -> list[str]:
        """Every stored item id, in the project's id order (:func:`sort_ids`)."""
        ids = [r[0] for r in self._db.execute("SELECT item_id FROM items")]
        return sort_ids(ids)

    def titles(self, item_ids: Iterable[str] | None = None) -> dict[str, str]:
        rows = self._db.execute("SELECT item_id, title FROM items")
        titles = dict(rows.fetchall())
        return titles if item_ids is None else {str(i): titles[str(i)] for i in item_ids}

    def items_with_text_field(self, name: str) -> int:
        """How many items' stored text holds a ``name: ...`` field (a catalogue column joined by ``compose_text``)."""
        escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = "SELECT COUNT(*) FROM items WHERE text LIKE ? ESCAPE '\\'"
        return self._db.execute(query, (f"%. {escaped}: %",)).fetchone()[0]

    def encoders(self) -> dict[str, list[str]]:
        """``modality -> encoder versions`` present in the store (more than one means a partial re-embed)."""
        found: dict[str, list[str]] = {}
        for modality, encoder in self._db.execute("SELECT DISTINCT modality, encoder FROM features ORDER BY 1, 2"):
            found.setdefault(modality, []).append(encoder)
        return found

    def stored_modalities(self) -> dict[str, set[str]]:
        """``item_id -> {"text", "image"}`` subset present, for every stored item."""
        found: dict[str, set[str]] = {item_id: set() for item_id in self.item_hashes()}
        for item_id, modality in self._db.execute("SELECT item_id, modality FROM features"):
            found[item_id].add(modality)
        return found

    def features_for(self, modality: str, item_ids: Sequence[str]) -> dict[str, tuple[str, np.ndarray]]:
        """``item_id -> (encoder_version, vector)`` for those of ``item_ids`` that have ``modality`` stored."""
        query = "SELECT item_id, encoder, vector FROM features WHERE modality = ? AND item_id IN ({marks})"
        return {item_id: (encoder, np.frombuffer(blob, dtype=np.float32))
                for item_id, encoder, blob in self._rows_for(query, item_ids, modality)}

    def image_refs(self, item_ids: Sequence[str]) -> dict[str, str | None]:
        """``item_id -> image_ref`` for those of ``item_ids`` that are stored."""
        return dict(self._rows_for("SELECT item_id, image_ref FROM items WHERE item_id IN ({marks})", item_ids))

    def _rows_for(self, query: str, item_ids: Sequence[str], *params) -> Iterator[tuple]:
        """Rows of ``query`` (whose ``{marks}`` is the ``IN`` list) for ``item_ids``, 500 ids per statement:
        SQLite caps the bound parameters of one statement."""
        ids = list(item_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            yield from self._db.execute(query.format(marks=",".join("?" * len(chunk))), (*params, *chunk))

    def feature_matrix(
        self, modality: str, item_ids: Sequence[str] | None = None
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Stack one modality's features: returns ``(item_ids, X (N, D) float32, present (N,) bool)``.

        Items lacking the modality get a zero row and ``present=False``. ``item_ids=None`` means every stored item.
        ``D`` is the stored vectors' size (384 for text, 1280 for image); when no item in the store has the modality
        (a text-only store asked for ``"image"``) it is 0: ``X`` is ``(N, 0)`` and ``present`` is all False.
        """
        if modality not in MODALITIES:
            raise ValueError(f"modality={modality!r} is not one of {MODALITIES}")
        ids = self.item_ids() if item_ids is None else [str(i) for i in item_ids]
        position = {item_id: i for i, item_id in enumerate(ids)}
        rows = self._db.execute("SELECT item_id, vector FROM features WHERE modality = ?", (modality,)).fetchall()
        dim = len(rows[0][1]) // 4 if rows else 0
        matrix = np.zeros((len(ids), dim), dtype=np.float32)
        present = np.zeros(len(ids), dtype=bool)
        hits = [(position[item_id], blob) for item_id, blob in rows if item_id in position]
        if hits:
            index = np.fromiter((i for i, _ in hits), dtype=np.int64, count=len(hits))
            matrix[index] = np.frombuffer(b"".join(blob for _, blob in hits), dtype=np.float32).reshape(len(hits), dim)
            present[index] = True
        return ids, matrix, present

    # -- item vectors, users, events --------------------------------------------------------------------------
    def put_item_vectors(self, item_ids: Sequence[str], vectors: np.ndarray, model: str) -> None:
        """Replace the stored item vectors ``(N, D)`` with those of ``model`` (one transaction)."""
        with self.transaction() as db:
            db.execute("DELETE FROM item_vectors")
            db.executemany(
                "INSERT INTO item_vectors VALUES (?, ?, ?)",
                [(str(i), model, _blob(v)) for i, v in zip(item_ids, vectors)],
            )

    def item_vectors(self) -> tuple[list[str], np.ndarray, str | None]:
        """``(item_ids, vectors (N, D), model)`` as last written by training."""
        rows = self._db.execute("SELECT item_id, model, vector FROM item_vectors").fetchall()
        if not rows:
            return [], np.zeros((0, 0), np.float32), None
        ids = [r[0] for r in rows]
        matrix = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        return ids, matrix, rows[0][1]

    def put_users(self, states: Sequence[UserState]) -> None:
        """Insert or replace user states; call inside :meth:`transaction` to commit them with their events."""
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO users VALUES (?, ?, ?, ?, ?, ?)",
                [(s.user_id, s.model, _blob(s.state), _blob(s.interest), s.last_timestamp, s.n_events)
                 for s in states],
            )

    def get_users(self, user_ids: Sequence[str] | None = None) -> dict[str, UserState]:
        """Stored states of ``user_ids`` (all users when ``None``); users never seen are absent."""
        query = "SELECT user_id, model, state, interest, last_timestamp, n_events FROM users"
        if user_ids is None:
            rows = self._db.execute(query).fetchall()
        else:
            ids = [str(u) for u in user_ids]
            rows = []
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows += self._db.execute(f"{query} WHERE user_id IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        return {
            r[0]: UserState(r[0], r[1], np.frombuffer(r[2], np.float32), np.frombuffer(r[3], np.float32), r[4], r[5])
            for r in rows
        }

    def replace_events(self, rows: Sequence[tuple[str, int, str, str, str]]) -> None:
        """Replace the whole event log with ``rows`` and delete every user state (they were folded from the old
        log); training calls this with what it read, inside the transaction that rebuilds the states."""
        with self.transaction() as db:
            db.execute("DELETE FROM events")
            db.execute("DELETE FROM users")
            db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)", rows)

    def add_events(self, rows: Sequence[tuple[str, int, str, str, str]]) -> None:
        """Append ``(user_id, timestamp, item_id, event, text)`` rows to the event log; duplicates are ignored."""
        with self.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)", rows)

    def insert_events(self, rows: Sequence[tuple[str, int, str, str, str]]) -> np.ndarray:
        """Append rows to the event log (inside the caller's transaction when there is one); returns ``(R,)
        bool``: which rows were new (a row already logged, or repeated earlier in ``rows``, is not)."""
        inserted = np.zeros(len(rows), dtype=bool)
        with self.transaction() as db:
            insert = "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)"
            for n, row in enumerate(rows):
                inserted[n] = db.execute(insert, row).rowcount == 1
        return inserted

    def logged_users(self) -> list[str]:
        """Every user with at least one logged event."""
        return [u for (u,) in self._db.execute("SELECT DISTINCT user_id FROM events ORDER BY user_id")]

    def logged_among(self, user_ids: Sequence[str]) -> set[str]:
        """Those of ``user_ids`` with at least one logged event."""
        found: set[str] = set()
        ids = list(user_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            query = f"SELECT DISTINCT user_id FROM events WHERE user_id IN ({','.join('?' * len(chunk))})"
            found.update(u for (u,) in self._db.execute(query, chunk))
        return found

    def seen_items(self, user_id: str, events: Sequence[str] | None = None) -> set[str]:
        """Items in the user's logged events (of the ``events`` names; all when ``None``), without reading the log."""
        query, params = "SELECT DISTINCT item_id FROM events WHERE user_id = ?", [str(user_id)]
        if events is not None:
            query += f" AND event IN ({','.join('?' * len(events))})"
            params += list(events)
        return {item_id for (item_id,) in self._db.execute(query, params)}

    def user_events(self, user_ids: Sequence[str] | None = None) -> dict[str, list[tuple]]:
        """``user_id -> [(timestamp, item_id, event, text), ...]`` in time order, for ``user_ids`` (all: ``None``).

        Interactions sort before text events at equal timestamps, as in training."""
        query = "SELECT user_id, timestamp, item_id, event, text FROM events"
        order = " ORDER BY user_id, timestamp, text != '', item_id"
        if user_ids is None:
            rows = self._db.execute(query + order).fetchall()
        else:
            ids = list(dict.fromkeys(str(u) for u in user_ids))
            rows = []
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows += self._db.execute(f"{query} WHERE user_id IN ({marks}){order}", chunk).fetchall()
        result: dict[str, list[tuple]] = {} if user_ids is None else {str(u): [] for u in user_ids}
        for user_id, *event in rows:
            result.setdefault(user_id, []).append(tuple(event))
        return result

    def cached_texts(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for key, blob in self._db.execute(f"SELECT key, vector FROM text_cache WHERE key IN ({marks})", chunk):
                found[key] = np.frombuffer(blob, np.float32)
        return found

    def cache_texts(self, entries: dict[str, np.ndarray]) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO text_cache VALUES (?, ?)", [(k, _blob(v)) for k, v in entries.items()])

    def delete_user(self, user_id: str) -> tuple[int, int, list[str]]:
        """Delete a user's events and state (:mod:`mmrec.forget`): ``(events, states, their texts)`` deleted."""
        with self.transaction() as db:
            texts = [t for (t,) in db.execute("SELECT DISTINCT text FROM events WHERE user_id = ?", (user_id,)) if t]
            events = db.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
            return events, db.execute("DELETE FROM users WHERE user_id = ?", (user_id,)).rowcount, texts

    def uncache_unlogged(self, keys: dict[str, list[str]]) -> int:
        """Delete the cached vectors ``keys[text]`` (:meth:`cache_texts`) of each text no logged event carries."""
        with self.transaction() as db:
            kept = {t for (t,) in self._rows_for("SELECT DISTINCT text FROM events WHERE text IN ({marks})", [*keys])}
            return sum(db.execute("DELETE FROM text_cache WHERE key = ?", (key,)).rowcount
                       for text, found in keys.items() if text not in kept for key in found)

    def tombstones(self, digests: Sequence[str], put: bool | None = None) -> set[str]:
        """Those of ``digests`` recorded as forgotten users (``put=True``: record them first; ``False``: remove)."""
        with self.transaction() if put is not None else contextlib.nullcontext(self._db) as db:
            if put is not None:
                db.execute("CREATE TABLE IF NOT EXISTS forgotten (digest TEXT PRIMARY KEY) WITHOUT ROWID")
                sql = "INSERT OR IGNORE INTO forgotten VALUES (?)" if put else "DELETE FROM forgotten WHERE digest = ?"
                db.executemany(sql, [(d,) for d in digests])
            return {d for (d,) in self._rows_for("SELECT digest FROM forgotten WHERE digest IN ({marks})", digests)}
