"""What events a trained model can fold in, checked before anything is written: known items and events, and text
exactly on the events training read by their text. Ids and timestamps are read by the one rule of every entry point
(:func:`mmrec.io.values.id_string`, :func:`~mmrec.io.values.unix_seconds`); errors name the row and field."""

from __future__ import annotations

from collections.abc import Sequence

from ..encoders.preprocess import clean_behaviour_texts
from ..io.values import id_string, unix_seconds

__all__ = ["EventRules"]


class EventRules:
    """The rules of one model: ``row`` (item id -> row), ``event_rank`` (event -> index), the ``text_events`` and
    the ``default_event``."""

    def __init__(self, row: dict[str, int], event_rank: dict[str, int], text_events: Sequence[str],
                 default_event: str) -> None:
        self.row, self.event_rank = row, event_rank
        self.text_events, self.default_event = tuple(text_events), default_event

    def event_index(self, event: str | None) -> int:
        event = self.default_event if event is None else str(event)
        if event not in self.event_rank:
            raise ValueError(f"unknown event {event!r}; known events: {list(self.event_rank)}")
        return self.event_rank[event]

    def text_problem(self, event: str, text: str) -> str:
        """Why an ``event`` with (cleaned) ``text`` cannot be read as training read events, or ``""``."""
        if event in self.text_events and not text:
            return (f"the model reads {event!r} events by their text and this one has none (training skips such "
                    "events)")
        if event not in self.text_events and text:
            carriers = (f"only {list(self.text_events)} events carry text" if self.text_events
                        else "the model was trained without text events")
            return f"{event!r} events carry no text in training ({carriers})"
        return ""

    def prepare(self, rows: Sequence[tuple]) -> list[tuple[str, int, str, str, str]]:
        """``(user_id, timestamp, item_id, event, text)`` rows read by the one id/timestamp rule; the first row
        (0-based) the model cannot fold in is an error naming it: by shape, then item, event, text, id and
        timestamp, in that order."""
        bad_shape = next((n for n, r in enumerate(rows) if not isinstance(r, (tuple, list)) or len(r) != 5), None)
        if bad_shape is not None:
            raise ValueError(f"rows[{bad_shape}] must be (user_id, timestamp, item_id, event, text), "
                             f"got {rows[bad_shape]!r}")
        for n, r in enumerate(rows):
            if (r[2].strip() if isinstance(r[2], str) else r[2]) not in self.row:
                raise KeyError(f"rows[{n}]: unknown item id {r[2]!r}: not in the store (embed it first)")
        for n, r in enumerate(rows):
            if not isinstance(r[3], str) or r[3] not in self.event_rank:
                raise ValueError(f"rows[{n}]: unknown event {r[3]!r}; known events: {list(self.event_rank)}")
        for n, r in enumerate(rows):
            if r[4] is not None and not isinstance(r[4], str):
                raise ValueError(f"rows[{n}]: text must be a string, got {r[4]!r}")
            problem = self.text_problem(r[3], r[4] or "")
            if problem:
                raise ValueError(f"rows[{n}]: {problem}")
        return [(id_string(u, f"rows[{n}] user_id"), unix_seconds(ts, f"rows[{n}] timestamp"),
                 id_string(item, f"rows[{n}] item_id"), event, text or "")
                for n, (u, ts, item, event, text) in enumerate(rows)]

    def history(self, history: Sequence[tuple]) -> list[tuple[int, str, str, str]]:
        """A ``score(history=...)`` argument as log events ``(timestamp, item_id, event, cleaned text)``; errors
        name ``history[n]``."""
        rows = []
        for n, event in enumerate(history):
            if not isinstance(event, (tuple, list)) or len(event) not in (3, 4):
                raise ValueError(f"history[{n}] must be (item_id, event, timestamp[, text]), got {event!r}")
            item_id, name = id_string(event[0], f"history[{n}] item_id"), event[1]
            ts = unix_seconds(event[2], f"history[{n}] timestamp")
            if item_id not in self.row:
                raise KeyError(f"unknown item id(s) {[item_id]}: not in the store (embed them first)")
            self.event_index(name)
            text = event[3] if len(event) == 4 and isinstance(event[3], str) else ""  # None/NaN: no text
            rows.append((ts, item_id, name or self.default_event, text))
        # cleaned as `observe` and training clean event texts; presence is judged on the cleaned text
        texts = clean_behaviour_texts([r[3] for r in rows])
        for n, (row, text) in enumerate(zip(rows, texts)):
            problem = self.text_problem(row[2], text)
            if problem:
                raise ValueError(f"history[{n}]: {problem}")
        return [(*r[:3], t) for r, t in zip(rows, texts)]
