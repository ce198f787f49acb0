"""Group commit: writes that arrive together from several threads share one SQLite transaction.

With ``durability="full"`` each commit waits for the disk; when many ``observe`` calls (HTTP requests on a thread
pool) arrive at once, the first caller commits everything queued behind it in one transaction, so the disk is
waited for once per group, not once per event. A caller returns only once its own rows are committed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

Result = TypeVar("Result")


class _Ticket:
    __slots__ = ("rows", "result", "error", "done")

    def __init__(self, rows: Sequence) -> None:
        self.rows, self.result, self.error, self.done = rows, None, None, False


class GroupCommit(Generic[Result]):
    """Runs ``commit(batches) -> results`` (one result per batch, in order) for the batches queued meanwhile.

    Leader/follower: a caller that finds no commit running commits every queued batch itself; the others wait for
    it and take their result. An exception raised by ``commit`` is raised in every caller of that group (nothing
    of the group was written: ``commit`` runs in one transaction)."""

    def __init__(self, commit: Callable[[list[Sequence]], list[Result]]) -> None:
        self._commit = commit
        self._cond = threading.Condition()
        self._queue: list[_Ticket] = []
        self._busy = False

    def submit(self, rows: Sequence) -> Result:
        ticket = _Ticket(rows)
        with self._cond:
            self._queue.append(ticket)
            while self._busy and not ticket.done:
                self._cond.wait()
            if not ticket.done:
                group, self._queue, self._busy = self._queue, [], True
        if not ticket.done:
            try:
                results = self._commit([t.rows for t in group])
                for t, result in zip(group, results):
                    t.result = result
            except BaseException as exc:  # every waiter of the group sees the failure
                for t in group:
                    t.error = exc
            finally:
                with self._cond:
                    for t in group:
                        t.done = True
                    self._busy = False
                    self._cond.notify_all()
        if ticket.error is not None:
            raise ticket.error
        return ticket.result
