"""The training and evaluation jobs behind ``mmrec train`` / ``mmrec evaluate``: read a store and event files, train
or evaluate, and write the trained model, item vectors, the event log and every user's first interest vector."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict

import numpy as np
import torch

from ..folding import EventFolder
from ..forget import scrub_store, without_forgotten
from ..pseudonym import FINGERPRINT_META, bind_id_key, pseudonymise_table, record_fingerprint
from ..store import Store
from ..trained import MODEL_DIR, TrainedModel, check_encoders, model_device
from .config import TrainConfig
from .data import event_log_rows, load_training_data
from .distributed import Ranks, main_first, process_group
from .evaluate import evaluate_model
from .loop import fit

__all__ = ["train_store", "evaluate_store"]


def _model_id(model: torch.nn.Module, seed: int) -> str:
    digest = hashlib.sha256(str(seed).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def train_store(store_dir, interactions, context_events=None, config: TrainConfig | None = None,
                log=print, unknown_items: str = "error", text_encoder=None, id_key=None) -> dict:
    """Train on ``interactions`` (+ optional text-bearing ``context_events``) against the items in ``store_dir``;
    save the model in ``STORE/model``, write item vectors, the event log and every user's interest vector.
    Returns a summary (epochs, best epoch, validation metrics, seconds).

    The training input is the truth: the store's event log is replaced by the events training read (events
    observed or refreshed before are dropped, rows removed or corrected in the files are gone), every user state
    is recomputed from it, and the model becomes the store's current one, in one transaction. Processes still
    holding the previous model are refused writes from then on (:class:`~mmrec.store.StaleModelError`); events
    refreshed or observed afterwards are appended to the new log.

    ``id_key`` (a key file, :mod:`mmrec.pseudonym`; ``None``: ``MMREC_ID_KEY``): user ids are stored as pseudonyms.
    A store of raw ids trained with a key becomes pseudonymised, its file rebuilt so no raw id is left in it.

    Under torchrun (``torchrun --nproc-per-node N -m mmrec train ...``) each process trains on its share of every
    batch (:mod:`mmrec.train.distributed`); rank 0 alone logs, writes the store and returns the summary, the other
    processes only read the store and return ``{"rank", "world_size"}``."""
    config = config or TrainConfig()
    with process_group(config.device) as ranks:
        return _train_store(store_dir, interactions, context_events, config, log, unknown_items, text_encoder, id_key,
                            ranks)


def _train_store(store_dir, interactions, context_events, config: TrainConfig, log, unknown_items: str, text_encoder,
                 id_key, ranks: Ranks | None) -> dict:
    if ranks is not None and not ranks.main:
        log = None
    store = Store(store_dir, create=False)
    key = bind_id_key(store, id_key, replacing_users=True)
    converting = key is not None and store.get_meta(FINGERPRINT_META) is None
    # users forgotten in this store (`mmrec forget`) never come back from the files: their rows are dropped here
    interactions = pseudonymise_table(without_forgotten(store, interactions, "interactions", key), key)
    context_events = pseudonymise_table(without_forgotten(store, context_events, "context events", key), key)
    with main_first(ranks):  # rank 0 caches the event texts it embeds in the store; the others then read them
        data = load_training_data(store, interactions, context_events, text_encoder, unknown_items=unknown_items)
    # Parsed before training and saving: bad input must fail fast and leave the stored model untouched.
    event_log = event_log_rows(interactions, context_events, data)
    if log:
        log(f"{data.split.n_users} users, {len(data.item_ids)} items, {len(data.behaviour.item)} events "
            f"({int((~data.behaviour.is_interaction).sum())} with text, {data.n_context_dropped} context rows "
            f"skipped: unknown user/item, empty text, bad timestamp or repeated row); "
            f"stored features: {data.encoders}")
    result = fit(data, config, log, ranks)
    if result is None:
        return {"rank": ranks.rank, "world_size": ranks.world_size}
    network = result.model.cpu()
    model_id = _model_id(network, config.seed)
    counts = np.bincount(data.split.train.event, minlength=len(data.event_names))
    summary = {
        "epochs": len(result.history), "best_epoch": result.best_epoch, "valid": result.best_valid,
        "seconds": round(result.seconds, 1), "seconds_per_epoch": round(result.seconds_per_epoch, 2),
        "max_len": network.max_len, "seed": config.seed, "history": result.history,
        "train_config": {k: v for k, v in asdict(config).items() if k != "model"},
    }
    trained = TrainedModel(network, {
        "model_id": model_id,
        "item_ids": list(data.item_ids),
        "known_items": np.flatnonzero(data.features.known.numpy()).tolist(),
        "event_names": list(data.event_names),
        "interaction_events": list(data.split.event_names),
        "default_event": data.event_names[int(counts.argmax())],
        "encoders": data.encoders,
        "train": summary,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    # Every item the store holds now, as serving will see them: items embedded during training are new items.
    item_ids = store.item_ids()
    with torch.no_grad():
        vectors = network.item_vectors(trained.item_features(store, item_ids))
    folder = EventFolder(store, network, item_ids, vectors, trained.event_names, torch.device("cpu"))
    # One transaction installs the model: the log becomes exactly what training read, every state is refolded
    # from it, and the new generation refuses writes from processes still holding the previous model. The files
    # are saved last inside it (a failure before rolls the store back and leaves the old files in place).
    with store.transaction():
        store.replace_events(event_log)
        store.put_item_vectors(item_ids, vectors.numpy(), model_id)
        rebuilt = folder.rebuild(model_id)
        record_fingerprint(store, key)
        store.install_model(model_id)
        trained.save(store.path / MODEL_DIR)
    if converting:  # the replaced raw ids must not linger in free pages or the write-ahead log
        scrub_store(store)
    if log:
        log(f"saved model {model_id} to {store.path / MODEL_DIR}; {rebuilt} user interest vectors refreshed")
    return {"model_id": model_id, "users": rebuilt, **{k: v for k, v in summary.items() if k != "history"}}


def evaluate_store(store_dir, interactions, context_events=None, stages=("valid", "test"), text_encoder=None,
                   unknown_items: str = "error", device: str = "cpu", id_key=None) -> dict:
    """Metrics of the store's model under the evaluation protocol: ``{stage: metrics}``, cold items included.
    ``unknown_items="drop"`` skips interaction rows naming items the store does not hold; ``device`` runs the
    model there (``"auto"``: CUDA when available); ``id_key``: the store's id key, as :func:`train_store`'s."""
    torch_device = model_device(device)
    store = Store(store_dir, create=False)
    key = bind_id_key(store, id_key)  # evaluation reads no stored user, but its forgotten users are keyed
    interactions = without_forgotten(store, interactions, "interactions", key)
    context_events = without_forgotten(store, context_events, "context events", key)
    trained = TrainedModel.load(store.path / MODEL_DIR)
    check_encoders(trained, store.encoders())
    network = trained.network.to(torch_device)
    data = load_training_data(store, interactions, context_events, text_encoder, unknown_items=unknown_items,
                              event_names=trained.event_names, interaction_events=trained.interaction_events)
    # as served: items embedded since training are new items (content only), untrained modalities unread
    data.features = trained.item_features(store, list(data.item_ids))
    results = {}
    for stage in stages:
        result = evaluate_model(network, data, stage)
        results[stage] = {**result.metrics, **result.cold_metrics, "n_users": result.n_users,
                          "n_cold_users": result.n_cold_users}
    return results
