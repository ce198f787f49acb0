"""``mmrec refresh --engine ray``: events folded into user states by a Ray Data actor pool, one writer.

The run is :func:`mmrec.serve.refresh_store`'s, split where it can be. The driver reads and validates the events
file (:func:`~mmrec.serve.refresh.user_batches`: the same rejected rows), and plans each batch of users as
:meth:`Recommender.apply_events` would: which rows the log lacks, and per user a GRU step from the stored state or a
recompute from the log. The actors, each holding the model once, fold the users (:meth:`EventFolder.step` /
:meth:`~mmrec.folding.EventFolder.recompute`) from what the plan ships them (events, start states, the event
texts' vectors), so they need no access to the store. The driver then commits each batch of users, events and
states, in one transaction. A user whose stored state or log changed between the plan and the commit (another
process wrote to them) is recomputed from the log in that transaction instead; a retrain meanwhile fails the batch
(:class:`~mmrec.store.StaleModelError`), and the refresh starts over on the new model, as the single-process one does.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..folding import EventFolder, LogEvent
from ..networks.model import MultimodalRecommender
from ..serve import Recommender, RefreshReport
from ..serve.refresh import user_batches
from ..store import StaleModelError, UserState
from .ray_session import RayConfig, commit_in_order, pool_size, ray_session, require_ray

__all__ = ["RefreshWorker", "ShippedTextFolder", "refresh_store_ray"]


class ShippedTextFolder(EventFolder):
    """An :class:`EventFolder` without a store: behaviour-text vectors come from ``texts`` (text -> ``(W,)``
    vector, shipped by the driver, which read or encoded them through the store's cache)."""

    def __init__(self, texts: dict[str, np.ndarray], network: MultimodalRecommender, item_ids: Sequence[str],
                 item_vectors: torch.Tensor, event_names: Sequence[str]) -> None:
        super().__init__(None, network, item_ids, item_vectors, event_names, torch.device("cpu"))
        self.texts = texts

    def text_vectors(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.texts[t] for t in texts]).astype(np.float32)


class RefreshWorker:
    """A Ray actor of the folding pool: holds the model once, then folds batches of users.

    A batch holds ``user_id``, ``batch`` (the driver's batch of users), ``kind`` (``"step"`` or ``"recompute"``),
    ``events`` (JSON ``[[timestamp, item_id, event, text], ...]``: the new events to step through, or the whole log
    to recompute from), ``start`` (JSON ``[last_timestamp, n_events]`` of the stored state, ``""``: from the initial
    state) and ``state`` (its ``(H,)`` float32 bytes) for ``B`` users; the answer is their ``state (B, H)``,
    ``interest (B, D)``, ``last_timestamp``, ``has_last`` and ``n_events``."""

    def __init__(self, network: MultimodalRecommender, model_id: str, item_ids: list[str], item_vectors: np.ndarray,
                 event_names: list[str], texts: dict[str, np.ndarray], threads: int) -> None:
        torch.set_num_threads(threads)
        self.model_id = model_id
        self.folder = ShippedTextFolder(texts, network.eval(), item_ids, torch.from_numpy(np.array(item_vectors)),
                                        event_names)
        self.hidden = int(network.interest_model.initial(1).shape[-1])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        users = [str(u) for u in batch["user_id"]]
        part = dict(zip(users, (int(b) for b in batch["batch"])))
        step, recompute, events, starts, logs = [], [], {}, {}, {}
        for k, user in enumerate(users):
            rows = [tuple(e) for e in json.loads(batch["events"][k])]
            if batch["kind"][k] == "recompute":
                recompute.append(user)
                logs[user] = rows
                continue
            step.append(user)
            events[user] = rows
            start = json.loads(batch["start"][k]) if batch["start"][k] else None
            starts[user] = None if start is None else UserState(
                user, self.model_id, np.frombuffer(batch["state"][k], np.float32), np.zeros(0, np.float32), *start)
        states = self.folder.step(self.model_id, step, events, starts)
        states += self.folder.recompute(self.model_id, recompute, logs) if recompute else []
        dim = int(self.folder.item_vectors.shape[1])
        return {"user_id": np.asarray([s.user_id for s in states], dtype=object),
                "batch": np.asarray([part[s.user_id] for s in states], dtype=np.int64),
                "state": np.stack([s.state for s in states]) if states else np.zeros((0, self.hidden), np.float32),
                "interest": np.stack([s.interest for s in states]) if states else np.zeros((0, dim), np.float32),
                "last_timestamp": np.asarray([s.last_timestamp or 0 for s in states], dtype=np.int64),
                "has_last": np.asarray([s.last_timestamp is not None for s in states], dtype=bool),
                "n_events": np.asarray([s.n_events for s in states], dtype=np.int64)}


def _fingerprint(state: UserState | None) -> tuple | None:
    """What a stored state must still be at commit time for a plan made from it to hold."""
    return None if state is None else (state.model, state.last_timestamp, state.n_events, state.state.tobytes())


@dataclass
class _Batch:
    """One batch of users planned: its rows as the log holds them, which of them the log lacked (``fresh``), the
    users' stored states as planned from (``bases``), the users to recompute, and the actors' work rows."""

    rows: list[tuple]
    fresh: np.ndarray
    bases: dict[str, tuple | None]
    recompute: set[str]
    work: list[dict] = field(default_factory=list)
    states: dict[str, UserState] = field(default_factory=dict)


def _plan(rec: Recommender, rows: list[tuple], index: int) -> _Batch:
    """Decide, reading the store only, what :meth:`Recommender.apply_events` would do with ``rows``."""
    rows = rec.stored_rows(rows)
    users = list(dict.fromkeys(r[0] for r in rows))
    stored, logs = rec.store.get_users(users), rec.store.user_events(users)
    logged = {u: set(logs[u]) for u in users}
    fresh = np.zeros(len(rows), bool)
    new: dict[str, list[LogEvent]] = {}
    for n, (user, *event) in enumerate(rows):
        if tuple(event) not in logged[user]:  # the log's key is the whole row: a repeat in the file is no news
            logged[user].add(tuple(event))
            fresh[n] = True
            new.setdefault(user, []).append(tuple(event))
    batch = _Batch(rows, fresh, {u: _fingerprint(stored.get(u)) for u in users}, set())
    for user, events in new.items():
        state = stored.get(user)
        brand_new = state is None and not logs[user]  # starts from the initial state
        if not brand_new and (state is None or state.model != rec.model_id
                              # an event in the same second as the last one may sort before it: recompute
                              or min(e[0] for e in events) <= (state.last_timestamp or 0)):
            batch.recompute.add(user)
            batch.work.append({"batch": index, "user_id": user, "kind": "recompute",
                               "events": json.dumps(logs[user] + events), "start": "", "state": b""})
        else:
            batch.work.append({"batch": index, "user_id": user, "kind": "step", "events": json.dumps(events),
                               "start": json.dumps([state.last_timestamp, state.n_events]) if state else "",
                               "state": state.state.tobytes() if state else b""})
    return batch


def _commit(rec: Recommender, batch: _Batch, report: RefreshReport) -> None:
    """Write one planned batch, events and states, in one transaction (see the module docstring)."""
    store = rec.store
    users = list(dict.fromkeys(r[0] for r in batch.rows))
    with store.transaction():
        if not rec.is_current():
            raise StaleModelError(f"store {store.path} was retrained while the refresh ran: nothing of this batch "
                                  "was written")
        now = store.get_users(users)
        fresh = store.insert_events(batch.rows)
        changed = {u for u in users if _fingerprint(now.get(u)) != batch.bases[u]}
        changed |= {r[0] for r, got, planned in zip(batch.rows, fresh, batch.fresh) if got != planned}
        active = {r[0] for r, got in zip(batch.rows, fresh) if got}
        store.put_users([s for u, s in batch.states.items() if u not in changed])
        redo = [u for u in users if u in changed and u in active]
        if redo:
            rec.folder.rebuild(rec.model_id, redo)
    report.users_refreshed += len(active)
    report.events_applied += int(fresh.sum())
    report.events_duplicate += int(len(fresh) - fresh.sum())
    report.users_recomputed += len((batch.recompute - changed) | set(redo))


def _text_table(rec: Recommender, batches: list[_Batch]) -> dict[str, np.ndarray]:
    """Vectors of the texts of every event the actors will fold (through the store's cache, as serving reads them)."""
    texts = list(dict.fromkeys(e[3] for b in batches for w in b.work for e in json.loads(w["events"]) if e[3]))
    if not texts:
        return {}
    return dict(zip(texts, rec.folder.text_vectors(texts)))


def _fold(ray, rec: Recommender, batches: list[_Batch], ray_config: RayConfig, report: RefreshReport) -> None:
    """Fold the planned batches on an actor pool and commit them in order as their users come back."""
    work = [w for b in batches for w in b.work]
    pool = pool_size(ray, ray_config, use_gpus=False)
    blocks, batch = pool.split(len(work), ray_config.batch_size)
    answers = ray.data.from_items(work, override_num_blocks=blocks).map_batches(
        RefreshWorker, batch_size=batch, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=pool.workers), num_cpus=pool.cpus,
        fn_constructor_kwargs={"network": rec.model, "model_id": rec.model_id, "item_ids": rec.item_ids,
                               "item_vectors": rec.item_vectors.cpu().numpy(), "event_names": list(rec.event_names),
                               "texts": _text_table(rec, batches), "threads": pool.threads},
    ).iter_batches(batch_size=None, batch_format="numpy")
    counts = Counter(w["batch"] for w in work)
    with tqdm(total=len(work), desc="refreshing (ray)", unit="user", disable=None) as bar:
        def file(answer: dict[str, np.ndarray]) -> list[int]:
            parts = [int(part) for part in answer["batch"]]
            for k, (part, user) in enumerate(zip(parts, answer["user_id"])):
                last = int(answer["last_timestamp"][k]) if answer["has_last"][k] else None
                batches[part].states[str(user)] = UserState(str(user), rec.model_id, np.array(answer["state"][k]),
                                                            np.array(answer["interest"][k]), last,
                                                            int(answer["n_events"][k]))
            bar.update(len(parts))
            return parts

        def commit(part: int) -> None:
            _commit(rec, batches[part], report)
            batches[part].states.clear()  # written: free them

        commit_in_order(answers, [counts[part] for part in range(len(batches))], file, commit, "refresh")


def refresh_store_ray(store_dir, events=None, rebuild: bool = False, batch_users: int = 2048,
                      ray_config: RayConfig | None = None, attempts: int = 3, id_key=None) -> RefreshReport:
    """:func:`mmrec.serve.refresh_store` with the users folded by a Ray Data actor pool (``ray_config``: the
    cluster and the pool). Same arguments, same rejected rows, same report, and states equal to the single-process
    refresh's (max abs difference <= 1e-5); ``batch_users`` users commit per transaction, so an interrupted refresh
    run again finishes the rest. ``rebuild`` recomputes every user from the log on the driver, as
    :meth:`Recommender.rebuild` does. Raises :class:`~mmrec.distributed.RayNotInstalledError` without Ray and
    ``RuntimeError`` when the Ray job fails."""
    require_ray()
    ray_config = ray_config or RayConfig()
    for attempt in range(attempts):
        try:
            return _refresh_once(store_dir, events, rebuild, batch_users, ray_config, id_key)
        except StaleModelError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _refresh_once(store_dir, events, rebuild: bool, batch_users: int, ray_config: RayConfig, id_key
                  ) -> RefreshReport:
    rec = Recommender.load(store_dir, device="cpu", id_key=id_key)
    try:
        report = RefreshReport()
        if events is not None:
            rows, report.rejected = user_batches(rec, events, batch_users)
            batches = [_plan(rec, chunk, index) for index, chunk in enumerate(rows)]
            if any(b.work for b in batches):
                with ray_session(ray_config) as ray:
                    _fold(ray, rec, batches, ray_config, report)
            else:  # every event is already logged: nothing to fold, no cluster needed
                for batch in batches:
                    _commit(rec, batch, report)
        if rebuild:
            report.add_rebuilt(rec.rebuild())
        return report
    finally:
        rec.store.close()
