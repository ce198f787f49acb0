"""The batch refresh behind ``mmrec refresh``: apply a file of new behaviour events to the stored interest
vectors, or recompute every user from the event log."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from ..forget import reject_forgotten
from ..io.events import EventTable, read_events
from ..store import StaleModelError
from .recommender import Recommender

__all__ = ["RefreshReport", "refresh_store", "user_batches", "validate_event_records", "validate_events"]


@dataclass
class RefreshReport:
    """What a refresh did: users whose interest changed, events applied, events already in the log, users
    recomputed from their log, and rejected rows with reasons."""

    users_refreshed: int = 0
    events_applied: int = 0
    events_duplicate: int = 0
    users_recomputed: int = 0
    rejected: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def add_rebuilt(self, users: int) -> None:
        """Count a rebuild of ``users`` users from their logs: each is recomputed, and so refreshed."""
        self.users_recomputed += users
        self.users_refreshed = max(self.users_refreshed, self.users_recomputed)


def validate_events(table: EventTable, rec: Recommender) -> tuple[list[tuple], list[dict]]:
    """Rows ``(user_id, timestamp, item_id, event, text)`` that can be applied, and the rejected ones: ``row`` (data
    rows counted from 1), ``user_id``, ``item_id``, the ``field`` at fault and the ``reason``. Ids, timestamps and
    texts are read as training reads them, so a file that trains also refreshes. ``mmrec refresh`` and the HTTP
    service's ``POST /events`` (:func:`validate_event_records`) both judge rows here."""
    users, items, texts = (pd.Series(a, dtype=object) for a in (table.user_id, table.item_id, table.text))
    stamps = pd.Series(table.timestamp)
    has_event_column = table.event is not None
    # as training names context events: the rows of a file with a text column the model read as events
    # (tags.csv's `tag`) are such events; otherwise the training data's usual event
    named = table.text_column if table.text_column in rec.text_events else rec.default_event
    events = pd.Series(table.event_names(named), dtype=object)
    reasons = pd.Series("", index=users.index)
    fields = pd.Series("", index=users.index)
    checks = [
        ("user_id", users == "", "empty user_id"),
        ("item_id", ~items.isin(rec.item_ids), "unknown item_id (not in the store)"),
        ("timestamp", pd.Series(~table.readable),
         "timestamp is missing, unreadable or beyond the int64 range (unix seconds or a date)"),
        ("event", ~events.isin(rec.event_names), f"unknown event; known events: {list(rec.event_names)}"),
        ("text", events.isin(rec.text_events) & (texts == ""),
         f"no text: {list(rec.text_events)} events are read by their text (training skips them without)"),
        ("text", ~events.isin(rec.text_events) & (texts != ""),
         "text on an event that carries none in training ("
         + (f"only {list(rec.text_events)} events have text" if rec.text_events
            else "the model was trained without text events")
         + ("" if has_event_column or not table.text_column else
            f"; without an event column these rows are {rec.default_event!r} events: add an event column")
         + ")"),
    ]
    for field_name, bad, reason in checks:
        first = bad & (reasons == "")
        reasons = reasons.mask(first, reason)
        fields = fields.mask(first, field_name)
    bad = reasons != ""
    rejected = [{"row": int(i) + 1, "user_id": users[i], "item_id": items[i], "field": fields[i],
                 "reason": reasons[i]} for i in np.flatnonzero(bad.to_numpy())]
    good = ~bad
    rows = list(zip(users[good], stamps[good].tolist(), items[good], events[good], texts[good]))
    return rows, rejected


EVENT_FIELDS = ("user_id", "item_id", "timestamp", "event", "text")


def validate_event_records(records: Sequence[dict], rec: Recommender) -> tuple[list[tuple], list[dict]]:
    """:func:`validate_events` for events given as records (dicts with the keys of :data:`EVENT_FIELDS`; a missing
    or ``None`` ``text`` is no text), read as ``mmrec refresh`` reads a file with these columns."""
    frame = pd.DataFrame.from_records(list(records), columns=list(EVENT_FIELDS))
    frame["text"] = frame["text"].where(frame["text"].notna(), "")
    return validate_events(read_events(frame), rec)


def refresh_store(store_dir, events=None, rebuild: bool = False, batch_users: int = 2048,
                  attempts: int = 3, id_key=None) -> RefreshReport:
    """Apply a file of new behaviour events to the stored interest vectors (vectorised over users, committed in
    batches of users), or recompute every user from the log with ``rebuild=True``. Re-applying the same file is a
    no-op: events already in the log are skipped.

    A retrain that installs a new model meanwhile replaces the event log with its training input (batches applied
    before it are gone with the old model): the refresh then loads the new model and applies the whole file again
    after it, up to ``attempts`` times in all, and reports that last pass; then
    :class:`~mmrec.store.StaleModelError`. ``id_key``: a pseudonymised store's key (:meth:`Recommender.load`)."""
    for attempt in range(attempts):
        try:
            return _refresh_once(store_dir, events, rebuild, batch_users, id_key)
        except StaleModelError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def user_batches(rec: Recommender, events, batch_users: int) -> tuple[list[list[tuple]], list[dict]]:
    """The rows of an events file that a refresh applies, in batches of ``batch_users`` users (a user's rows
    together, users in the order they first appear), and the rejected rows: what :func:`refresh_store` commits
    batch by batch, and :func:`mmrec.distributed.refresh_store_ray` too."""
    table = read_events(events)
    rows, rejected = validate_events(table, rec)
    rows, rejected = reject_forgotten(rec.store, table, rows, rejected, rec.id_key)  # `mmrec forget`
    by_user: dict[str, list[tuple]] = {}
    for row in rows:
        by_user.setdefault(row[0], []).append(row)
    users = list(by_user)
    return ([[r for u in users[start : start + batch_users] for r in by_user[u]]
             for start in range(0, len(users), batch_users)], rejected)


def _refresh_once(store_dir, events, rebuild: bool, batch_users: int, id_key) -> RefreshReport:
    rec = Recommender.load(store_dir, device="cpu", id_key=id_key)
    try:
        report = RefreshReport()
        if events is not None:
            batches, report.rejected = user_batches(rec, events, batch_users)
            for chunk in batches:
                counts = rec.apply_events(chunk)
                report.users_refreshed += counts["users"]
                report.events_applied += counts["applied"]
                report.events_duplicate += counts["duplicates"]
                report.users_recomputed += counts["recomputed"]
        if rebuild:
            report.add_rebuilt(rec.rebuild())
        return report
    finally:
        rec.store.close()
