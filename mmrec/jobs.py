"""Job-level entry points behind the CLI and scripts: train, evaluate, refresh."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from .data import _id_strings, _ids_or_empty, _readable_timestamps, _timestamps, read_table
from .encoders.preprocess import clean_behaviour_texts
from .recommender import Recommender, model_item_features
from .store import Store
from .training import TrainConfig, TrainingData, evaluate_model, fit, load_training_data

__all__ = ["train_store", "evaluate_store", "refresh_store", "RefreshReport"]

MODEL_DIR = "model"


def _model_id(model: torch.nn.Module, seed: int) -> str:
    digest = hashlib.sha256(str(seed).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def train_store(store_dir, interactions, context_events=None, config: TrainConfig | None = None,
                log=print, unknown_items: str = "error", text_encoder=None) -> dict:
    """Train on ``interactions`` (+ optional text-bearing ``context_events``) against the items in ``store_dir``;
    save the model in ``STORE/model``, write item vectors, the event log and every user's interest vector.
    Returns a summary (epochs, best epoch, validation metrics, seconds)."""
    config = config or TrainConfig()
    store = Store(store_dir, create=False)
    data = load_training_data(store, interactions, context_events, text_encoder, unknown_items=unknown_items)
    # Parsed before training and saving: bad input must fail fast and leave the stored model untouched.
    event_log = _event_log_rows(interactions, context_events, data)
    if log:
        log(f"{data.split.n_users} users, {len(data.item_ids)} items, {len(data.behaviour.item)} events "
            f"({int((~data.behaviour.is_interaction).sum())} with text, {data.n_context_dropped} context rows "
            f"skipped: unknown user/item, empty text, bad timestamp or repeated row); "
            f"stored features: {data.encoders}")
    result = fit(data, config, log)
    model = result.model.cpu()
    model_id = _model_id(model, config.seed)
    counts = np.bincount(data.split.train.event, minlength=len(data.event_names))
    summary = {
        "epochs": len(result.history), "best_epoch": result.best_epoch, "valid": result.best_valid,
        "seconds": round(result.seconds, 1), "seconds_per_epoch": round(result.seconds_per_epoch, 2),
        "max_len": config.max_len, "seed": config.seed, "history": result.history,
        "train_config": {k: v for k, v in asdict(config).items() if k != "model"},
    }
    meta = {
        "model_id": model_id,
        "item_ids": list(data.item_ids),
        "known_items": np.flatnonzero(data.features.known.numpy()).tolist(),
        "event_names": list(data.event_names),
        "interaction_events": list(data.split.event_names),
        "default_event": data.event_names[int(counts.argmax())],
        "encoders": data.encoders,
        "train": summary,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    model.save(store.path / MODEL_DIR, meta)
    store.add_events(event_log)
    rec = Recommender.load(store, device="cpu")
    store.put_item_vectors(rec.item_ids, rec.item_vectors.numpy(), model_id)
    rebuilt = rec.rebuild()
    if log:
        log(f"saved model {model_id} to {store.path / MODEL_DIR}; {rebuilt} user interest vectors refreshed")
    return {"model_id": model_id, "users": rebuilt, **{k: v for k, v in summary.items() if k != "history"}}


def _event_log_rows(interactions, context_events, data: TrainingData) -> list[tuple[str, int, str, str, str]]:
    """Every user's events (all interactions, including held-out ones, and text events) as store log rows
    ``(user_id, timestamp, item_id, event, text)``, ids and timestamps read as :func:`~mmrec.data.load_interactions`
    reads them."""
    frame = read_table(interactions)
    # load_interactions drops unknown items (unknown_items="drop") before reading users and timestamps.
    item_ids = _id_strings(frame["item_id"], "item_id")
    known = pd.Series(item_ids).isin(data.item_ids).to_numpy()
    frame, item_ids = frame[known], item_ids[known]
    events = (_id_strings(frame["event"], "event") if "event" in frame.columns
              else np.full(len(frame), data.event_names[0], dtype=object))
    rows = pd.DataFrame({"user_id": _id_strings(frame["user_id"], "user_id"),
                         "timestamp": _timestamps(frame["timestamp"]),
                         "item_id": item_ids, "event": events, "text": ""})
    if context_events is not None:
        ctx = read_table(context_events)
        text_column = next(c for c in ("text", "tag", "review", "query") if c in ctx.columns)
        seconds, readable = _readable_timestamps(ctx["timestamp"])
        users, items = _ids_or_empty(ctx["user_id"], "user_id"), _ids_or_empty(ctx["item_id"], "item_id")
        texts = np.array(clean_behaviour_texts(ctx[text_column].tolist()), dtype=object)
        rows = pd.concat([rows, pd.DataFrame({
            "user_id": users.to_numpy(), "timestamp": seconds, "item_id": items.to_numpy(),
            "event": ctx["event"].astype(str).to_numpy() if "event" in ctx.columns else text_column,
            "text": texts,
        })[readable & (users != "").to_numpy() & (texts != "")]])  # training skips text events without text
    rows = rows[rows.item_id.isin(data.item_ids) & rows.event.isin(data.event_names)]
    return list(rows[["user_id", "timestamp", "item_id", "event", "text"]].itertuples(index=False, name=None))


def evaluate_store(store_dir, interactions, context_events=None, stages=("valid", "test"), text_encoder=None,
                   unknown_items: str = "error", device: str = "cpu") -> dict:
    """Metrics of the store's model under the README's evaluation protocol: ``{stage: metrics}``, cold items included.
    ``unknown_items="drop"`` skips interaction rows naming items the store does not hold; ``device`` runs the
    model there (``"auto"``: CUDA when available)."""
    rec = Recommender.load(store_dir, device=device)
    data = load_training_data(rec.store, interactions, context_events, text_encoder, unknown_items=unknown_items,
                              event_names=rec.event_names, interaction_events=rec.interaction_events)
    # as served: items embedded since training are new items (content only, lifted), untrained modalities unread
    data.features = model_item_features(rec.store, list(data.item_ids), rec.meta)
    results = {}
    for stage in stages:
        result = evaluate_model(rec.model, data, stage, rec.max_len)
        results[stage] = {**result.metrics, **result.cold_metrics, "n_users": result.n_users,
                          "n_cold_users": result.n_cold_users}
    return results


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


def _validate_events(frame: pd.DataFrame, rec: Recommender) -> tuple[list[tuple], list[dict]]:
    """Rows ``(user_id, timestamp, item_id, event, text)`` that can be applied, and the rejected ones with reasons
    (row numbers count data rows from 1)."""
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in frame.columns]
    if missing:
        raise ValueError(f"events file lacks column(s) {missing} (columns: {list(frame.columns)})")
    users, items = _ids_or_empty(frame["user_id"], "user_id"), _ids_or_empty(frame["item_id"], "item_id")
    # read as training reads them (numbers, datetimes, date strings), so a file that trains also refreshes
    seconds, readable = _readable_timestamps(frame["timestamp"])
    stamps = pd.Series(seconds, index=frame.index)
    text_column = next((c for c in ("text", "tag", "review", "query") if c in frame.columns), None)
    texts = pd.Series(clean_behaviour_texts(frame[text_column].tolist()) if text_column else "", index=frame.index)
    if "event" in frame.columns:
        events = frame["event"].astype(str).str.strip()
    else:
        # as training names context events: the rows of a file with a text column the model read as events
        # (tags.csv's `tag`) are such events; otherwise the training data's usual event
        named = text_column if text_column in rec.text_events else rec.default_event
        events = pd.Series(named, index=frame.index, dtype=object)
    reasons = pd.Series("", index=frame.index)
    checks = [
        (users == "", "empty user_id"),
        (~items.isin(list(rec._position)), "unknown item_id (not in the store)"),
        (pd.Series(~readable, index=frame.index),
         "timestamp is missing, unreadable or beyond the int64 range (unix seconds or a date)"),
        (~events.isin(rec.event_names), f"unknown event; known events: {list(rec.event_names)}"),
        (events.isin(rec.text_events) & (texts == ""),
         f"no text: {list(rec.text_events)} events are read by their text (training skips them without)"),
        (~events.isin(rec.text_events) & (texts != ""),
         "text on an event that carries none in training ("
         + (f"only {list(rec.text_events)} events have text" if rec.text_events
            else "the model was trained without text events")
         + ("" if "event" in frame.columns or not text_column else
            f"; without an event column these rows are {rec.default_event!r} events: add an event column")
         + ")"),
    ]
    for bad, reason in checks:
        reasons = reasons.mask(bad & (reasons == ""), reason)
    bad = reasons != ""
    rejected = [{"row": int(i) + 1, "user_id": users[i], "item_id": items[i], "reason": reasons[i]}
                for i in np.flatnonzero(bad.to_numpy())]
    good = ~bad
    rows = list(zip(users[good], stamps[good].tolist(), items[good], events[good], texts[good]))
    return rows, rejected


def refresh_store(store_dir, events=None, rebuild: bool = False, batch_users: int = 2048) -> RefreshReport:
    """Apply a file of new behaviour events to the stored interest vectors (vectorised over users, committed in
    batches of users), or recompute every user from the log with ``rebuild=True``. Re-applying the same file is a
    no-op: events already in the log are skipped."""
    rec = Recommender.load(store_dir, device="cpu")
    report = RefreshReport()
    if events is not None:
        rows, report.rejected = _validate_events(read_table(events), rec)
        by_user: dict[str, list[tuple]] = {}
        for row in rows:
            by_user.setdefault(row[0], []).append(row)
        users = list(by_user)
        for start in range(0, len(users), batch_users):
            chunk = [r for u in users[start : start + batch_users] for r in by_user[u]]
            counts = rec.apply_events(chunk)
            report.users_refreshed += counts["users"]
            report.events_applied += counts["applied"]
            report.events_duplicate += counts["duplicates"]
            report.users_recomputed += counts["recomputed"]
    if rebuild:
        report.users_recomputed += rec.rebuild()
        report.users_refreshed = max(report.users_refreshed, report.users_recomputed)
    return report
