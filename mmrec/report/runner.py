"""Running the report: train and evaluate every model on the identical split, one run per protocol, model and
seed (in worker processes with ``jobs`` > 1), record each in the run cache, then render the report."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..baselines import BASELINES, build_baseline
from ..beyond import beyond_accuracy, content_vectors
from ..data.behaviour import build_behaviour
from ..encoders.precision import resolve_device
from ..evaluation import METRICS, EvalResult, TieRule, evaluate
from ..forget import without_forgotten
from ..pseudonym import IdKey, bind_id_key
from ..store import Store
from ..train.baselines import BaselineTrainConfig, fit_baseline
from ..train.calibration import calibrate_new_item_bias, calibrate_new_item_slots
from ..train.data import TrainingData, load_training_data
from ..train.evaluate import evaluate_model
from ..train.loop import fit, seed_everything
from .cache import append_run, fingerprint, load_runs, settings_of
from .checks import compute_checks
from .config import QualityConfig
from .render import exposure_setting, format_checks, format_table, label, read_reference, write_plots

__all__ = ["ReportSummary", "Source", "run_report", "train_in_workers"]

log = logging.getLogger(__name__)


@dataclass
class ReportSummary:
    """``table`` (markdown), ``runs`` (one dict per model, protocol and seed), ``checks`` (win, bootstrap, cold
    ratio) and the files written."""

    table: str
    runs: list[dict]
    checks: dict
    files: list[Path]


def _split_metrics(result: EvalResult, data: TrainingData) -> dict[str, dict[str, float | None]]:
    """Test metrics over all users, warm users and cold users (``None`` where a group is empty), and the
    beyond-accuracy metrics of all users' top 10 lists (``"beyond"``; intra-list diversity over the store's text
    features for every model: :mod:`mmrec.beyond`)."""
    out: dict[str, dict[str, float | None]] = {}
    for group, mask in (("all", np.ones_like(result.is_cold)), ("warm", ~result.is_cold), ("cold", result.is_cold)):
        out[group] = {m: float(result.per_user[m][mask].mean()) if mask.any() else None for m in METRICS}
    out["n"] = {"all": int(len(result.is_cold)), "warm": int((~result.is_cold).sum()),
                "cold": int(result.is_cold.sum())}
    beyond = beyond_accuracy(result.top_items, data.split, content_vectors(data.features))
    out["beyond"] = {m: None if np.isnan(v) else v for m, v in beyond.items()}
    return out


def _run_baseline(name: str, data: TrainingData, seed: int, config: QualityConfig) -> dict:
    seed_everything(seed)
    device = resolve_device(config.device)
    model = build_baseline(name, data.split, content_vectors(data.features))
    fitted = fit_baseline(model, data.split, BaselineTrainConfig(
        epochs=config.baseline_epochs, patience=config.baseline_patience, seed=seed, progress=False,
        device=str(device)))
    # the baselines read interactions alone, not the context events our model reads
    test = evaluate(model, build_behaviour(data.split), "test", device=device)
    return {
        "valid_ndcg@10": fitted.best_valid.metrics["ndcg@10"], "best_epoch": fitted.best_epoch,
        "epochs": fitted.epochs_run, "seconds_per_epoch": fitted.seconds_per_epoch,
        "train_seconds": fitted.train_seconds, "valid_curve": [h.valid_ndcg10 for h in fitted.history],
        "test": _split_metrics(test, data), "per_user_ndcg@10": test.per_user["ndcg@10"].tolist(),
    }


def _same_exposure(ratio: float, exposure: str, other_ratio: float, other_exposure: str) -> bool:
    # without a target, the exposure method is never used
    return ratio == other_ratio and (ratio == 0 or exposure == other_exposure)


def _run_ours(variant: str, data: TrainingData, seed: int, config: QualityConfig) -> dict:
    parts = set(variant.split("+"))
    model = replace(config.train.model, use_text="text" in parts, use_image="image" in parts, use_id="id" in parts)
    train = replace(config.train, seed=seed, device=config.device, model=model)
    fitted = fit(data, train, log=log.info)
    test = evaluate_model(fitted.model, data, "test")
    policy = fitted.model.new_items
    train_time = [row["train_seconds"] for row in fitted.history]
    run = {
        "valid_ndcg@10": fitted.best_valid["ndcg@10"], "best_epoch": fitted.best_epoch, "epochs": len(fitted.history),
        "seconds_per_epoch": float(np.mean(train_time)), "train_seconds": fitted.seconds,
        "valid_curve": [row["valid_ndcg@10"] for row in fitted.history],
        "new_item_bias": policy.bias, "new_item_logit_bias": policy.logit_bias,
        "new_item_text_only": policy.text_only, "new_item_neighbours": policy.neighbours,
        "new_item_slots": policy.slots,
        "test": _split_metrics(test, data), "per_user_ndcg@10": test.per_user["ndcg@10"].tolist(),
    }
    if config.exposure_ratio > 0 and data.held_out is not None:
        # the same trained model, new items ranked the other ways (each a final configuration: test read once):
        # no exposure target (the lift NDCG@10 chooses), the exposure lift, new-item places
        alternatives = (("no_exposure", 0.0, "lift"), ("exposure", config.exposure_ratio, "lift"),
                        ("exposure_slots", config.exposure_ratio, "slots"))
        for key, ratio, exposure in alternatives:
            if _same_exposure(ratio, exposure, train.new_item_recall_ratio, train.new_item_exposure):
                continue  # that is how the run itself was evaluated
            if exposure == "slots":
                chosen, valid = calibrate_new_item_slots(fitted.model, data, ratio, train.eval_batch_size,
                                                         train.new_item_neighbours)
            else:
                chosen, valid = calibrate_new_item_bias(fitted.model, data, train.new_item_bias_grid,
                                                        train.eval_batch_size, ratio, train.new_item_neighbours)
            result = evaluate_model(fitted.model, data, "test")
            other = fitted.model.new_items
            run[key] = {"ratio": ratio, "slots" if exposure == "slots" else "lift": chosen,
                        **({"depth": model.new_item_slot_depth} if exposure == "slots" else {}),
                        "new_item_text_only": other.text_only, "new_item_neighbours": other.neighbours,
                        "valid_ndcg@10": valid["ndcg@10"], "valid_cold_recall@20": valid["cold_recall@20"],
                        "test": _split_metrics(result, data)}
    return run


@dataclass
class Source:
    """Where a run's data comes from. Worker processes receive the store's folder (a database connection cannot
    travel) and open it themselves."""

    store: Store | Path
    interactions: object
    context_events: object
    unknown_items: str
    id_key: IdKey | None = None  # the store's (mmrec.pseudonym): its forgotten users are tombstoned as pseudonyms


def train_one(source: Source, protocol: str, seed: int, model: str, config: QualityConfig,
               loaded: dict) -> tuple[dict, float]:
    """Train and evaluate one run: ``(result, wall seconds)``. ``loaded`` keeps the last split read: runs come
    protocol by protocol and seed by seed, so the next run mostly reads the same one."""
    if (protocol, seed) not in loaded:
        loaded.clear()
        store = source.store if isinstance(source.store, Store) else Store(source.store, create=False)
        loaded[protocol, seed] = load_training_data(  # forgotten users (`mmrec forget`) stay out, as in train
            store, without_forgotten(store, source.interactions, "interactions", source.id_key),
            without_forgotten(store, source.context_events, "context events", source.id_key),
            unknown_items=source.unknown_items, hold_out=config.hold_out if protocol == "cold" else 0.0,
            hold_out_seed=seed)
    tick = time.perf_counter()
    result = (_run_baseline if model in BASELINES else _run_ours)(model, loaded[protocol, seed], seed, config)
    return result, time.perf_counter() - tick


_worker_loaded: dict = {}  # a worker process serves one report, so its split cache lives as long as it does


def _train_in_worker(*task) -> tuple[dict, float]:
    return train_one(*task, _worker_loaded)


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def train_in_workers(pending: list[tuple[str, int, str]], source: Source, config: QualityConfig,
                      record: Callable[..., None]) -> None:
    """Train ``pending`` runs ``config.jobs`` at a time in worker processes; each is recorded as it finishes. On an
    error the runs not yet started are cancelled; the finished ones are already recorded."""
    jobs = min(config.jobs, len(pending))
    threads = config.threads or max(1, (os.cpu_count() or 1) // jobs)
    log.info("%d runs, %d at a time (%d CPU threads each)", len(pending), jobs, threads)
    # spawn, not fork: a forked child of a process that has used CUDA or torch's thread pool can hang
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=(threads,)) as pool:
        to_worker = replace(source, store=source.store.path)
        futures = {pool.submit(_train_in_worker, to_worker, *task, config): task for task in pending}
        unfinished = set(pending)
        try:
            for future in as_completed(futures):
                protocol, seed, model = task = futures[future]
                try:
                    result = future.result()
                except BrokenProcessPool as error:
                    # every unfinished run fails with this, so which one's process died is not known
                    runs = "; ".join(f"{p} protocol, seed {s}: {m}" for p, s, m in sorted(unfinished))
                    raise RuntimeError(
                        f"a worker process was killed (out of memory? try fewer --jobs) while these runs were "
                        f"unfinished: {runs}. Finished runs are kept; rerun the command to resume") from error
                except Exception as error:
                    raise RuntimeError(f"{protocol} protocol, seed {seed}: {model} failed: "
                                       f"{type(error).__name__}: {error}") from error
                record(protocol, seed, model, *result)
                unfinished.discard(task)
                log.info("%s protocol, seed %d: %s done", protocol, seed, model)
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def _check_store_has(store: Store, models: Sequence[str]) -> None:
    """Refuse, before any training, variants of our model that read a modality the store holds no features for:
    they would train on less than their name says (or on nothing) and their rows would mislead."""
    present = set(store.encoders())
    lacking = {m: sorted({"text", "image"} & set(m.split("+")) - present) for m in models if m not in BASELINES}
    lacking = {m: missing for m, missing in lacking.items() if missing}
    if lacking:
        kept = [m for m in models if m not in lacking]
        instead = f" or pass --models {','.join(kept)}" if kept else ""
        raise ValueError(
            f"models: {', '.join(lacking)} read {' and '.join(sorted({x for v in lacking.values() for x in v}))} "
            f"features the store does not hold; embed them (posters: --images-root){instead}")


def run_report(
    store: Store,
    interactions,
    out: Path,
    config: QualityConfig | None = None,
    context_events=None,
    reference: Path | None = None,
    command: str = "",
    on_run: Callable[[dict], None] | None = None,
    train: bool = True,
    unknown_items: str = "error",
    id_key=None,
) -> ReportSummary:
    """Train and evaluate every model of ``config`` under each protocol and seed, then write ``report.md``,
    ``results.json``, ``metrics.png`` and ``valid_curves.png`` to ``out`` (runs already in ``out/runs.jsonl``
    are reused; ``train=False`` only rebuilds the report from them). ``unknown_items="drop"`` skips interaction
    rows naming items the store does not hold. ``id_key``: a pseudonymised store's key (``None``: ``MMREC_ID_KEY``),
    needed to leave its forgotten users out."""
    config = config or QualityConfig()
    key = bind_id_key(store, id_key) if store is not None else None  # None: the report rebuilt from its runs
    if train:
        _check_store_has(store, config.models)
    out = Path(out)
    runs_path = out / "runs.jsonl"
    settings_key = fingerprint(config)
    other_settings: set = set()
    stale: set = set()
    outdated: set = set()
    done = load_runs(runs_path, settings_key, other_settings, stale, outdated)
    wanted = {(p, m, s) for p in config.protocols for m in config.models for s in config.seeds}
    # popularity runs from before the tie rule are redone even by --no-train: they take seconds and no device
    redo = wanted & stale - set(done)
    unusable = sorted((wanted & other_settings) - set(done))
    retrain = sorted(wanted & outdated - set(done))
    if not train and not wanted & (set(done) | redo) and not unusable:
        why = (f" ({len(retrain)} of them predate training's choice of new items' content on validation)"
               if retrain else "")
        raise ValueError(f"{runs_path}: no finished runs of the models, seeds and protocols asked for{why}: nothing "
                         "to rebuild a report from (run it without --no-train to train them)")
    if unusable and not train:
        # rebuilding from runs made with other options would silently drop their rows
        message = (f"{runs_path}: {len(unusable)} of the runs asked for exist only with other settings (e.g. "
                   f"{' '.join(map(str, unusable[0]))}); pass the training options they were made with (--epochs, "
                   "--patience, --exposure-ratio...): their settings are in the report that made them")
        if not wanted & (set(done) | redo):
            raise ValueError(message)
        log.warning("%s; their rows are left out", message)
    if retrain and not train:
        log.warning("%d of the runs asked for (e.g. %s) were made before training chose, on validation, whether new "
                    "items are built from their text alone: their rows are left out; run without --no-train to "
                    "retrain them", len(retrain), " ".join(map(str, retrain[0])))
    missing = wanted - set(done) - redo - set(unusable) - set(retrain)
    if missing and not train:
        log.warning("%d of the runs asked for are not finished (e.g. %s): their rows are left out", len(missing),
                    " ".join(map(str, sorted(missing)[0])))
    out.mkdir(parents=True, exist_ok=True)
    pending = [(protocol, seed, model) for protocol in config.protocols for seed in config.seeds
               for model in config.models if (protocol, model, seed) not in done
               and (train or (protocol, model, seed) in redo)]
    source = Source(store, interactions, context_events, unknown_items, key)

    def record(protocol: str, seed: int, model: str, result: dict, seconds: float) -> None:
        run = {"protocol": protocol, "model": model, "seed": seed, "fingerprint": settings_key,
               "tie_rule": TieRule.EXPECTED.value, **result, "wall_seconds": seconds}
        append_run(runs_path, run)
        done[(protocol, model, seed)] = run
        if on_run:
            on_run(run)

    if config.jobs > 1 and len(pending) > 1:
        train_in_workers(pending, source, config, record)
    else:
        previous_threads = torch.get_num_threads()
        if config.threads:
            torch.set_num_threads(config.threads)
        loaded: dict = {}
        try:
            for protocol, seed, model in pending:
                log.info("%s protocol, seed %d: %s", protocol, seed, model)
                record(protocol, seed, model, *train_one(source, protocol, seed, model, config, loaded))
        finally:
            torch.set_num_threads(previous_threads)
    runs = [done[k] for k in sorted(done) if k[0] in config.protocols and k[1] in config.models
            and k[2] in config.seeds]
    ref = read_reference(reference) if reference else None
    checks = compute_checks(runs, config, ref)
    table = format_table(runs, config.models, config.protocols)
    files = write_plots(runs, config, out)
    settings = settings_of(config)
    trained_exposure = exposure_setting(config.train.new_item_recall_ratio, config.train.new_item_exposure)
    body = [
        "# mmrec quality report", "",
        f"Command: `{command}`" if command else "", "",
        f"Seeds {list(config.seeds)}; protocols {list(config.protocols)} (cold: {config.hold_out:.0%} of rated items "
        "held out of training, chosen by the seed); test metrics as mean ± std over seeds; warm = users whose "
        "test item occurs in training, cold = the rest. Full ranking over the catalogue, history excluded. "
        f"Our models' rows rank new items as trained: {trained_exposure}; rows with a suffix rank them another way "
        "from the same trained models. "
        "\"valid ndcg@10\" is the best epoch's; for our models, with how new items are ranked and built chosen on "
        "validation after early stopping, while the validation curves below show each epoch before that choice. "
        "coverage@10 (share of the catalogue in any user's top 10), gini@10 (of the items' exposure), ild@10 (mean "
        "pairwise cosine distance within a list, every model over the store's text features) and novelty@10 (mean "
        "-log2 of an item's share of users who trained on it) read all test users' top 10 lists, history excluded "
        "(docs/evaluation.md).",
        "",
        table, "", "## Checks", "", format_checks(checks) or (
            f"(no checks: they compare {label(config.ours)} (--ours) with the ID-only models, and these runs do not "
            "include both)"), "",
        "![metrics](metrics.png)" if files else "", "", "![validation curves](valid_curves.png)" if files else "",
        "", "## Settings", "", "```json", json.dumps(settings, indent=2, default=str), "```", "",
    ]
    (out / "report.md").write_text("\n".join(body))
    slim = [{k: v for k, v in r.items() if k != "per_user_ndcg@10"} for r in runs]
    (out / "results.json").write_text(json.dumps({"settings": settings, "checks": checks, "runs": slim}, indent=2,
                                                 default=str))
    return ReportSummary(table=table, runs=runs, checks=checks,
                         files=[out / "report.md", out / "results.json", runs_path, *files])
