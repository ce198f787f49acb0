"""Quality report: every model on the identical split, 3 seeds, warm and cold, with a paired bootstrap.

Two protocols (README, "Evaluation protocol"):

- ``standard``: chronological leave-one-out, full ranking, history excluded. "warm" = users whose test item occurs
  in training, "cold" = the rest (on ml-latest-small: items rated once, by that user, last).
- ``cold``: the same split with a seeded 10% of the rated items removed from training entirely
  (:func:`mmrec.data.hold_out_items`); users whose test item was held out are the cold users, ranked over the whole
  catalogue like everyone else. Our model's runs there rank new items as training chose (by default the fewest
  places at the end of every top 20 reserved for new items that give cold users a validation Recall@20 of half the
  warm users', :func:`mmrec.training.calibrate_new_item_slots`) and, from the same trained model, each other way
  too: with no exposure target (the new-item lift validation NDCG@10 chooses); with the lift chosen for the
  exposure target ``exposure_ratio`` (:func:`mmrec.training.calibrate_new_item_bias`); with new-item places for it.
  Each is a final configuration, so test is read once for each.

Models: the ID-only baselines of :mod:`mmrec.baselines` (``pop``, ``bpr``, ``gru4rec``, ``sasrec``) and our model
with any mix of item signals (``id``, ``text``, ``image``, ``text+image``, ``text+image+id``). Each finished run
is appended to ``runs.jsonl`` in the output folder at once, so an interrupted report resumes where it stopped
(runs are keyed by protocol, model and seed, and by a fingerprint of the settings they depend on). Choices are
made on validation; the test set is read once per final configuration.

Example::

    from mmrec.report import QualityConfig, run_report
    summary = run_report(store, "interactions.csv", "report/", QualityConfig(seeds=(0, 1, 2)), "tags.csv")
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .baselines import BASELINES, build_baseline, seed_everything
from .baselines import TrainConfig as BaselineTrainConfig
from .baselines import fit as fit_baseline
from .encoders.precision import resolve_device
from .evaluation import METRICS, EvalResult, TieRule, evaluate, paired_bootstrap
from .store import Store
from .training import (TrainConfig, TrainingData, calibrate_new_item_bias, calibrate_new_item_slots, evaluate_model,
                       fit, load_training_data)

__all__ = ["OUR_VARIANTS", "PROTOCOLS", "QualityConfig", "ReportSummary", "run_report", "read_reference"]

log = logging.getLogger(__name__)

PROTOCOLS: tuple[str, ...] = ("standard", "cold")
OUR_VARIANTS: tuple[str, ...] = ("id", "text", "image", "text+image", "text+image+id")
ID_ONLY: tuple[str, ...] = ("pop", "bpr", "gru4rec", "sasrec", "id")
SIGNALS = frozenset({"text", "image", "id"})


def is_ours(model: str) -> bool:
    """Whether ``model`` names our model by its item signals: ``+``-joined ``text``, ``image``, ``id``."""
    parts = model.split("+")
    return bool(model) and set(parts) <= SIGNALS and len(set(parts)) == len(parts)


@dataclass
class QualityConfig:
    """What the report trains and how.

    Attributes:
        models: baselines (:data:`mmrec.baselines.BASELINES`) and our model's variants, named by their item signals
            (``text``, ``image``, ``id`` joined by ``+``; default :data:`OUR_VARIANTS`).
        seeds: one run per model, protocol and seed; the cold protocol's held-out items are chosen by the seed too.
        protocols: subset of :data:`PROTOCOLS`.
        ours: the variant the win and the bootstrap are computed for.
        hold_out: share of rated items removed from training in the ``cold`` protocol.
        train: our model's training options (epochs, patience...); its ``seed`` is replaced per run. Patience 20:
            the content models' validation NDCG@10 plateaus for 10-20 epochs before it climbs again; on
            ml-latest-small it raised text + image + ID's mean validation NDCG@10 (seeds 0-2) from 0.0766 with
            patience 8 to 0.0835 (best epochs 45, 50, 90).
        baseline_epochs / baseline_patience: the baselines' early stopping (GRU4Rec plateaus for ~15 epochs).
        bootstrap_resamples: paired bootstrap over test users.
        threads: torch CPU threads (``None``: torch's default; with ``jobs`` > 1, the CPU's cores shared out
            among the workers).
        jobs: runs trained at once, each in its own worker process. One run of these models uses a small part of
            a GPU (the README table's 21 standard-protocol runs ran side by side on one H100 in 7 minutes); on a
            CPU the workers share its cores. Results do not depend on it beyond floating-point rounding: a CPU
            run repeats bit for bit at the same thread count, in a worker or not.
            Workers are started by spawning, so a script that calls :func:`run_report` with ``jobs`` > 1 needs the
            usual ``if __name__ == "__main__":`` guard.
        device: where every model trains and is evaluated (``"auto"``: CUDA when available).
        exposure_ratio: in the cold protocol, our model is also evaluated with no exposure target, with the
            new-item lift recalibrated on validation for this cold/warm Recall@20 ratio and with new-item places
            chosen for it, each skipped where it is how ``train`` ranks new items anyway (0: none of these).
    """

    models: tuple[str, ...] = (*BASELINES, *OUR_VARIANTS)
    seeds: tuple[int, ...] = (0, 1, 2)
    protocols: tuple[str, ...] = PROTOCOLS
    ours: str = "text+image+id"
    hold_out: float = 0.1
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=120, patience=20, show_progress=False))
    baseline_epochs: int = 200
    baseline_patience: int = 30
    bootstrap_resamples: int = 10_000
    threads: int | None = None
    jobs: int = 1
    device: str = "auto"
    exposure_ratio: float = 0.5

    def __post_init__(self) -> None:
        unknown = [m for m in (*self.models, self.ours) if m not in BASELINES and not is_ours(m)]
        if unknown:
            raise ValueError(f"models: unknown {unknown}; choose from {list(BASELINES)} or our model's item signals "
                             f"joined by '+', e.g. {list(OUR_VARIANTS)}")
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad:
            raise ValueError(f"protocols: unknown {bad}; choose from {list(PROTOCOLS)}")
        if not self.seeds:
            raise ValueError("seeds: need at least one seed")
        if not 0.0 < self.hold_out < 1.0:
            raise ValueError(f"hold_out: must be in (0, 1), got {self.hold_out}")
        if self.exposure_ratio < 0:
            raise ValueError(f"exposure_ratio: must be >= 0, got {self.exposure_ratio}")
        if self.jobs < 1 or (self.threads is not None and self.threads < 1):
            raise ValueError(f"jobs and threads: must be >= 1, got jobs={self.jobs}, threads={self.threads}")


@dataclass
class ReportSummary:
    """``table`` (markdown), ``runs`` (one dict per model, protocol and seed), ``checks`` (win, bootstrap, cold
    ratio) and the files written."""

    table: str
    runs: list[dict]
    checks: dict
    files: list[Path]


def _split_metrics(result: EvalResult) -> dict[str, dict[str, float | None]]:
    """Test metrics over all users, warm users and cold users (``None`` where a group is empty)."""
    out: dict[str, dict[str, float | None]] = {}
    for group, mask in (("all", np.ones_like(result.is_cold)), ("warm", ~result.is_cold), ("cold", result.is_cold)):
        out[group] = {m: float(result.per_user[m][mask].mean()) if mask.any() else None for m in METRICS}
    out["n"] = {"all": int(len(result.is_cold)), "warm": int((~result.is_cold).sum()),
                "cold": int(result.is_cold.sum())}
    return out


def _run_baseline(name: str, data: TrainingData, seed: int, config: QualityConfig) -> dict:
    seed_everything(seed)
    device = resolve_device(config.device)
    model = build_baseline(name, data.split)
    fitted = fit_baseline(model, data.split, BaselineTrainConfig(
        epochs=config.baseline_epochs, patience=config.baseline_patience, seed=seed, progress=False,
        device=str(device)))
    model.eval()
    test = evaluate(model.full_sort_scores, data.split, "test", device=device)
    return {
        "valid_ndcg@10": fitted.best_valid.metrics["ndcg@10"], "best_epoch": fitted.best_epoch,
        "epochs": fitted.epochs_run, "seconds_per_epoch": fitted.seconds_per_epoch,
        "train_seconds": fitted.train_seconds, "valid_curve": [h.valid_ndcg10 for h in fitted.history],
        "test": _split_metrics(test), "per_user_ndcg@10": test.per_user["ndcg@10"].tolist(),
    }


def _same_exposure(ratio: float, exposure: str, other_ratio: float, other_exposure: str) -> bool:
    # without a target, the exposure method is never used
    return ratio == other_ratio and (ratio == 0 or exposure == other_exposure)


def _run_ours(variant: str, data: TrainingData, seed: int, config: QualityConfig) -> dict:
    parts = set(variant.split("+"))
    train = copy.deepcopy(config.train)
    train.seed = seed
    train.device = config.device
    train.model.use_text, train.model.use_image, train.model.use_id = "text" in parts, "image" in parts, "id" in parts
    fitted = fit(data, train, log=log.info)
    test = evaluate_model(fitted.model, data, "test", train.max_len)
    train_time = [row["train_seconds"] for row in fitted.history]
    run = {
        "valid_ndcg@10": fitted.best_valid["ndcg@10"], "best_epoch": fitted.best_epoch, "epochs": len(fitted.history),
        "seconds_per_epoch": float(np.mean(train_time)), "train_seconds": fitted.seconds,
        "valid_curve": [row["valid_ndcg@10"] for row in fitted.history],
        "new_item_bias": fitted.model.config.new_item_bias,
        "new_item_logit_bias": fitted.model.config.new_item_logit_bias,
        "new_item_text_only": fitted.model.config.new_item_text_only,
        "new_item_neighbours": fitted.model.config.new_item_neighbours,
        "new_item_slots": fitted.model.config.new_item_slots,
        "test": _split_metrics(test), "per_user_ndcg@10": test.per_user["ndcg@10"].tolist(),
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
                chosen, valid = calibrate_new_item_slots(fitted.model, data, ratio, train.max_len,
                                                         train.eval_batch_size, train.new_item_neighbours)
            else:
                chosen, valid = calibrate_new_item_bias(fitted.model, data, train.new_item_bias_grid, train.max_len,
                                                        train.eval_batch_size, ratio, train.new_item_neighbours)
            result = evaluate_model(fitted.model, data, "test", train.max_len)
            c = fitted.model.config
            run[key] = {"ratio": ratio, "slots" if exposure == "slots" else "lift": chosen,
                        **({"depth": c.new_item_slot_depth} if exposure == "slots" else {}),
                        "new_item_text_only": c.new_item_text_only, "new_item_neighbours": c.new_item_neighbours,
                        "valid_ndcg@10": valid["ndcg@10"], "valid_cold_recall@20": valid["cold_recall@20"],
                        "test": _split_metrics(result)}
    return run


@dataclass
class _Source:
    """Where a run's data comes from. Worker processes receive the store's folder (a database connection cannot
    travel) and open it themselves."""

    store: Store | Path
    interactions: object
    context_events: object
    unknown_items: str


def _train_one(source: _Source, protocol: str, seed: int, model: str, config: QualityConfig,
               loaded: dict) -> tuple[dict, float]:
    """Train and evaluate one run: ``(result, wall seconds)``. ``loaded`` keeps the last split read: runs come
    protocol by protocol and seed by seed, so the next run mostly reads the same one."""
    if (protocol, seed) not in loaded:
        loaded.clear()
        store = source.store if isinstance(source.store, Store) else Store(source.store, create=False)
        loaded[protocol, seed] = load_training_data(
            store, source.interactions, source.context_events,
            unknown_items=source.unknown_items, hold_out=config.hold_out if protocol == "cold" else 0.0,
            hold_out_seed=seed)
    tick = time.perf_counter()
    result = (_run_baseline if model in BASELINES else _run_ours)(model, loaded[protocol, seed], seed, config)
    return result, time.perf_counter() - tick


_worker_loaded: dict = {}  # a worker process serves one report, so its split cache lives as long as it does


def _train_in_worker(*task) -> tuple[dict, float]:
    return _train_one(*task, _worker_loaded)


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _train_in_workers(pending: list[tuple[str, int, str]], source: _Source, config: QualityConfig,
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


def _settings(config: QualityConfig) -> dict:
    settings = {k: v for k, v in asdict(config).items() if k != "train"}
    settings["train"] = asdict(config.train)
    settings["train"].pop("device")  # every run trains on `device` above
    return settings


def _fingerprint(config: QualityConfig) -> str:
    """What a run's result depends on (not which models or seeds are listed): runs with another fingerprint are
    retrained rather than reused."""
    settings = _settings(config)
    for key in ("models", "seeds", "protocols", "ours", "bootstrap_resamples", "threads", "jobs", "device"):
        settings.pop(key)
    settings["train"].pop("show_progress")
    for chosen_after_training in ("new_item_bias", "new_item_logit_bias", "new_item_text_only", "new_item_neighbours",
                                  "new_item_slots"):
        settings["train"]["model"].pop(chosen_after_training)  # on validation, per run (fit ignores a given value)
    # settings added later leave the fingerprint of runs made before them as it was while they keep their defaults
    for section, key, default in ((settings["train"], "new_item_exposure", "lift"),
                                  (settings["train"], "new_item_neighbours", 20),
                                  (settings["train"]["model"], "new_item_slot_depth", 20),
                                  (settings["train"]["model"], "new_item_neighbour_temperature", 0.05)):
        if section[key] == default:
            section.pop(key)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


_TIE_PRONE = ("pop",)


def _predates_new_item_choices(run: dict) -> bool:
    """Whether a run of our model was trained before training chose on validation how new items are built (from
    their text alone: models reading text and images; from their nearest trained items: models reading text)."""
    model = run.get("model")
    if not (model and is_ours(model) and "text" in model.split("+")):
        return False
    return "new_item_neighbours" not in run or ("image" in model.split("+") and "new_item_text_only" not in run)


def _load_runs(path: Path, fingerprint: str, other_settings: set | None = None,
               stale: set | None = None, outdated: set | None = None) -> dict[tuple[str, str, int], dict]:
    """The runs of ``path`` made with ``fingerprint``'s settings, by (protocol, model, seed); the keys of runs made
    with other settings are added to ``other_settings``, those of popularity runs from before the tie rule to
    ``stale``, those of our text-reading variants from before training chose how new items are built to
    ``outdated``."""
    runs: dict[tuple[str, str, int], dict] = {}
    if path.is_file():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                run = json.loads(line)
            except json.JSONDecodeError:
                # a write cut short by a crash or kill: that run is simply trained again
                log.warning("%s line %d is not a complete run; ignoring it (the run will be repeated)", path, number)
                continue
            # popularity ties on most items: its runs from before ties counted their expected metric are redone
            # (in seconds); models scoring with continuous vectors have no ties for the rule to act on
            stale_ties = run.get("model") in _TIE_PRONE and run.get("tie_rule") != TieRule.EXPECTED.value
            key = (run.get("protocol"), run.get("model"), run.get("seed"))
            if run.get("fingerprint") == fingerprint and _predates_new_item_choices(run):
                # new items were built from all their content then; now validation may choose other ways
                if outdated is not None:
                    outdated.add(key)
                continue
            if run.get("fingerprint") == fingerprint and not stale_ties:
                runs[key] = run
            elif stale_ties and stale is not None and run.get("fingerprint") == fingerprint:
                stale.add(key)
            elif other_settings is not None and not stale_ties:
                other_settings.add(key)
    return runs


def _append_run(path: Path, run: dict) -> None:
    """Append one run as one ``write`` on an ``O_APPEND`` descriptor, on a line of its own: reports sharing the
    file (one per shard) do not interleave their lines, and a line cut short earlier spoils only itself."""
    line = (json.dumps(run) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size:
            with path.open("rb") as existing:
                existing.seek(-1, os.SEEK_END)
                if existing.read(1) != b"\n":
                    line = b"\n" + line
        os.write(fd, line)
    finally:
        os.close(fd)


def _mean_std(values: list[float | None]) -> tuple[float, float] | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return float(np.mean(present)), float(np.std(present, ddof=1)) if len(present) > 1 else 0.0


def _cell(stat: tuple[float, float] | None) -> str:
    return "–" if stat is None else f"{stat[0]:.4f} ± {stat[1]:.4f}"


def _label(model: str) -> str:
    return f"ours: {model}" if is_ours(model) else model


# Other rankings of new items a cold-protocol run of ours is evaluated with: (key in the run, label suffix).
_ALTERNATIVE_ROWS = (("no_exposure", "no new-item exposure target"), ("exposure", "lift for cold/warm >= {ratio:g}"),
                     ("exposure_slots", "new-item places for cold/warm >= {ratio:g}"))


def exposure_setting(ratio: float, exposure: str) -> str:
    """In words: how new items are ranked by a model trained with this ``new_item_recall_ratio`` and exposure."""
    if ratio == 0:
        return "no new-item exposure target (the lift validation NDCG@10 chooses)"
    how = "new-item places" if exposure == "slots" else "the new-item lift"
    return f"{how} for cold/warm >= {ratio:g}"


def _evaluations(runs: list[dict], protocol: str, model: str) -> list[tuple[str, list[tuple[dict, dict]]]]:
    """A model's rows under a protocol: (label, [(run, evaluation)]), where the evaluation holds the test metrics
    of the run as trained or, in further rows, of the other ways of ranking new items it was evaluated with."""
    rows = [r for r in runs if r["protocol"] == protocol and r["model"] == model]
    if not rows:
        return []
    evaluations = [(_label(model), [(r, r) for r in rows])]
    for key, suffix in _ALTERNATIVE_ROWS:
        pairs = [(r, r[key]) for r in rows if key in r]
        if pairs:
            evaluations.append((f"{_label(model)}, {suffix.format(ratio=pairs[0][1]['ratio'])}", pairs))
    return evaluations


def format_table(runs: list[dict], models: tuple[str, ...], protocols: tuple[str, ...]) -> str:
    """Markdown: one row per protocol and model, test metrics warm and cold as mean ± std over seeds."""
    header = ["protocol", "model", "seeds"] + [f"{g} {m}" for g in ("warm", "cold") for m in METRICS]
    header += ["all ndcg@10", "valid ndcg@10", "epochs (best)", "s/epoch", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for protocol in protocols:
        for model in models:
            for label, pairs in _evaluations(runs, protocol, model):
                cells = [protocol, label, str(len(pairs))]
                for group in ("warm", "cold"):
                    cells += [_cell(_mean_std([e["test"][group][m] for _, e in pairs])) for m in METRICS]
                cells.append(_cell(_mean_std([e["test"]["all"]["ndcg@10"] for _, e in pairs])))
                cells.append(_cell(_mean_std([e["valid_ndcg@10"] for _, e in pairs])))
                cells.append(f"{np.mean([r['epochs'] for r, _ in pairs]):.0f} "
                             f"({np.mean([r['best_epoch'] for r, _ in pairs]):.0f})")
                cells.append(f"{np.mean([r['seconds_per_epoch'] for r, _ in pairs]):.1f}")
                cells.append(f"{np.mean([r['train_seconds'] for r, _ in pairs]):.0f}")
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_reference(path: Path) -> dict[str, float]:
    """Test NDCG@10 per model from a reference markdown table (``../shared/baselines/*.md``): lower-cased model
    name -> value. Reads the first table whose header has an ``NDCG@10`` column."""
    values: dict[str, float] = {}
    column = None
    for line in Path(path).read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|"):
            if column is not None and values:
                break
            continue
        if column is None:
            if "NDCG@10" in cells:
                column = cells.index("NDCG@10")
            continue
        if set(line.replace("|", "").strip()) <= set("-: "):
            continue
        name = re.sub(r"\s*\(.*\)", "", cells[0]).strip().lower()
        try:
            values[name] = float(cells[column])
        except (ValueError, IndexError):
            continue
    return values


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def _cold_warm_recall(evaluations: list[dict]) -> dict[str, float] | None:
    """Mean warm and cold test Recall@20 over runs (or their exposure evaluations), and cold over warm; ``None``
    when either group is empty in every run."""
    warm, cold = (_mean_std([e["test"][g]["recall@20"] for e in evaluations]) for g in ("warm", "cold"))
    if not (warm and cold):
        return None
    return {"warm_recall@20": warm[0], "cold_recall@20": cold[0], "ratio": _ratio(cold[0], warm[0])}


def _checks(runs: list[dict], config: QualityConfig, reference: dict[str, float] | None) -> dict:
    """Win ratio, paired bootstrap and cold/warm ratio for ``config.ours`` (standard and cold protocol)."""
    checks: dict = {"ours": config.ours,
                    "trained_exposure": exposure_setting(config.train.new_item_recall_ratio,
                                                         config.train.new_item_exposure)}
    standard = [r for r in runs if r["protocol"] == "standard"]
    ours = sorted((r for r in standard if r["model"] == config.ours), key=lambda r: r["seed"])
    id_only = {m: [r for r in standard if r["model"] == m] for m in ID_ONLY if m != config.ours}
    id_only = {m: rows for m, rows in id_only.items() if rows}
    if ours and id_only:
        means = {m: float(np.mean([r["test"]["all"]["ndcg@10"] for r in rows])) for m, rows in id_only.items()}
        best = max(means, key=means.get)
        ours_mean = float(np.mean([r["test"]["all"]["ndcg@10"] for r in ours]))
        checks["ours_ndcg@10"] = ours_mean
        checks["best_id_only"] = {"model": best, "ndcg@10": means[best], "ratio": _ratio(ours_mean, means[best])}
        # Per-user NDCG@10 averaged over each model's seeds, then resampled over users (pairs stay together).
        a = np.mean([r["per_user_ndcg@10"] for r in ours], axis=0)
        b = np.mean([r["per_user_ndcg@10"] for r in id_only[best]], axis=0)
        boot = paired_bootstrap(a, b, n_resamples=config.bootstrap_resamples, seed=0)
        checks["bootstrap"] = {"vs": best, "mean_diff": boot.mean_diff, "ci95": [boot.ci_low, boot.ci_high],
                               "p_better": boot.p_better, "resamples": config.bootstrap_resamples}
        # Averaging over seeds hides how much one training run varies; the same test seed by seed shows it.
        theirs = {r["seed"]: r for r in id_only[best]}
        checks["bootstrap"]["per_seed"] = [
            {"seed": r["seed"], "mean_diff": one.mean_diff, "ci95": [one.ci_low, one.ci_high], "p_better": one.p_better}
            for r in ours if r["seed"] in theirs
            for one in [paired_bootstrap(np.asarray(r["per_user_ndcg@10"]),
                                         np.asarray(theirs[r["seed"]]["per_user_ndcg@10"]),
                                         n_resamples=config.bootstrap_resamples, seed=0)]]
        if reference:
            sequential = {k: v for k, v in reference.items() if k in ("gru4rec", "sasrec")}
            if sequential:
                ref_best = max(sequential, key=sequential.get)
                checks["best_reference"] = {"model": ref_best, "ndcg@10": sequential[ref_best],
                                            "ratio": _ratio(ours_mean, sequential[ref_best])}
    cold_runs = [r for r in runs if r["protocol"] == "cold" and r["model"] == config.ours]
    recall = _cold_warm_recall(cold_runs)
    if recall:
        checks["cold_protocol"] = {**recall, "n_cold_users": [r["test"]["n"]["cold"] for r in cold_runs]}
        checks["cold_protocol"]["ndcg@10"] = float(np.mean([r["test"]["all"]["ndcg@10"] for r in cold_runs]))
        checks["cold_protocol"]["slots"] = [r.get("new_item_slots", 0) for r in cold_runs]
        for key, _ in _ALTERNATIVE_ROWS:
            other = [r[key] for r in cold_runs if key in r]
            if other and len(other) == len(cold_runs):
                chosen = "slots" if key == "exposure_slots" else "lift"
                checks["cold_protocol"][key] = {
                    "target": other[0]["ratio"], chosen: [e[chosen] for e in other], **_cold_warm_recall(other),
                    "ndcg@10": float(np.mean([e["test"]["all"]["ndcg@10"] for e in other])),
                    **({"depth": other[0]["depth"]} if key == "exposure_slots" else {})}
    return checks


def _format_checks(checks: dict) -> str:
    lines = []
    if "best_id_only" in checks:
        b = checks["best_id_only"]
        lines.append(f"- {_label(checks['ours'])}: test NDCG@10 {checks['ours_ndcg@10']:.4f} = {b['ratio']:.2f}x the "
                     f"best ID-only model here ({_label(b['model'])}, {b['ndcg@10']:.4f}); target >= 1.10x.")
    if "best_reference" in checks:
        r = checks["best_reference"]
        lines.append(f"- vs the reference file's best sequential model ({r['model']}, {r['ndcg@10']:.4f}): "
                     f"{r['ratio']:.2f}x; target >= 1.10x.")
    if "bootstrap" in checks:
        b = checks["bootstrap"]
        lines.append(f"- Paired bootstrap over test users ({b['resamples']:,} resamples, per-user NDCG@10 averaged "
                     f"over seeds) vs {_label(b['vs'])}: mean difference {b['mean_diff']:+.4f}, 95% interval "
                     f"[{b['ci95'][0]:+.4f}, {b['ci95'][1]:+.4f}], P(ours better) = {b['p_better']:.3f}.")
        if b.get("per_seed"):
            per_seed = "; ".join(
                f"seed {p['seed']} {p['mean_diff']:+.4f} [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}], "
                f"P = {p['p_better']:.3f}" for p in b["per_seed"])
            lines.append("  - Seed by seed (each seed of ours vs the same seed of theirs, same resampling): "
                         f"{per_seed}.")
    if "cold_protocol" in checks:
        c = checks["cold_protocol"]

        def recall(e: dict) -> str:
            return f"cold Recall@20 {e['cold_recall@20']:.4f} vs warm {e['warm_recall@20']:.4f} = {e['ratio']:.2f}x"

        places = f", places {c['slots']}" if any(c["slots"]) else ""
        lines.append(f"- Cold protocol, {_label(checks['ours'])} as trained ({checks['trained_exposure']}{places}): "
                     f"{recall(c)} (target >= 0.5x); all-user NDCG@10 {c['ndcg@10']:.4f}; cold users per seed "
                     f"{c['n_cold_users']}.")
        if "no_exposure" in c:
            e = c["no_exposure"]
            lines.append(f"- The same trained models with no new-item exposure target, the new-item lift chosen on "
                         f"validation NDCG@10 (lifts {e['lift']} std): {recall(e)}; all-user NDCG@10 "
                         f"{e['ndcg@10']:.4f}.")
        if "exposure" in c:
            e = c["exposure"]
            lines.append(f"- The same trained models with the new-item lift chosen on validation for cold/warm >= "
                         f"{e['target']:g} (lifts {e['lift']} std): {recall(e)}; all-user NDCG@10 "
                         f"{e['ndcg@10']:.4f}.")
        if "exposure_slots" in c:
            e = c["exposure_slots"]
            lines.append(f"- The same trained models with the last places of every top {e['depth']} reserved for new "
                         f"items, as few as reach cold/warm >= {e['target']:g} on validation (places {e['slots']}): "
                         f"{recall(e)}; all-user NDCG@10 {e['ndcg@10']:.4f}.")
    return "\n".join(lines)


def _plots(runs: list[dict], config: QualityConfig, out: Path) -> list[Path]:
    """``metrics.png`` (test NDCG@10 and Recall@20 per model, warm and cold, mean ± std) and ``valid_curves.png``
    (validation NDCG@10 per epoch, seed ``seeds[0]``, standard protocol)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'mmrec[report]'): no plots written")
        return []
    files = []
    models = [m for m in config.models if any(r["model"] == m for r in runs)]
    fig, axes = plt.subplots(len(config.protocols), 2, figsize=(12, 4 * len(config.protocols)), squeeze=False)
    for row, protocol in enumerate(config.protocols):
        bars = [e for m in models for e in _evaluations(runs, protocol, m)]
        x = np.arange(len(bars))
        for col, metric in enumerate(("ndcg@10", "recall@20")):
            ax = axes[row][col]
            for shift, group in ((-0.2, "warm"), (0.2, "cold")):
                stats = [_mean_std([e["test"][group][metric] for _, e in pairs]) for _, pairs in bars]
                ax.bar(x + shift, [s[0] if s else 0 for s in stats], 0.4, yerr=[s[1] if s else 0 for s in stats],
                       label=group, capsize=3)
            ax.set_xticks(x, [label for label, _ in bars], rotation=30, ha="right", fontsize=8)
            ax.set_title(f"{protocol} protocol: test {metric} (mean ± std over seeds)")
            ax.legend()
    fig.tight_layout()
    files.append(out / "metrics.png")
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 5))
    for m in models:
        run = next((r for r in runs if r["model"] == m and r["protocol"] == config.protocols[0]
                    and r["seed"] == config.seeds[0]), None)
        if run and run["valid_curve"]:
            ax.plot(range(1, len(run["valid_curve"]) + 1), run["valid_curve"], label=_label(m))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NDCG@10")
    ax.set_title(f"validation NDCG@10 per epoch, before the new-item lift ({config.protocols[0]} protocol, "
                 f"seed {config.seeds[0]})")
    if ax.lines:  # popularity alone has no epochs
        ax.legend(fontsize=8)
    fig.tight_layout()
    files.append(out / "valid_curves.png")
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)
    return files


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
) -> ReportSummary:
    """Train and evaluate every model of ``config`` under each protocol and seed, then write ``report.md``,
    ``results.json``, ``metrics.png`` and ``valid_curves.png`` to ``out`` (runs already in ``out/runs.jsonl``
    are reused; ``train=False`` only rebuilds the report from them). ``unknown_items="drop"`` skips interaction
    rows naming items the store does not hold."""
    config = config or QualityConfig()
    if train:
        _check_store_has(store, config.models)
    out = Path(out)
    runs_path = out / "runs.jsonl"
    fingerprint = _fingerprint(config)
    other_settings: set = set()
    stale: set = set()
    outdated: set = set()
    done = _load_runs(runs_path, fingerprint, other_settings, stale, outdated)
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
    source = _Source(store, interactions, context_events, unknown_items)

    def record(protocol: str, seed: int, model: str, result: dict, seconds: float) -> None:
        run = {"protocol": protocol, "model": model, "seed": seed, "fingerprint": fingerprint,
               "tie_rule": TieRule.EXPECTED.value, **result, "wall_seconds": seconds}
        _append_run(runs_path, run)
        done[(protocol, model, seed)] = run
        if on_run:
            on_run(run)

    if config.jobs > 1 and len(pending) > 1:
        _train_in_workers(pending, source, config, record)
    else:
        previous_threads = torch.get_num_threads()
        if config.threads:
            torch.set_num_threads(config.threads)
        loaded: dict = {}
        try:
            for protocol, seed, model in pending:
                log.info("%s protocol, seed %d: %s", protocol, seed, model)
                record(protocol, seed, model, *_train_one(source, protocol, seed, model, config, loaded))
        finally:
            torch.set_num_threads(previous_threads)
    runs = [done[k] for k in sorted(done) if k[0] in config.protocols and k[1] in config.models
            and k[2] in config.seeds]
    ref = read_reference(reference) if reference else None
    checks = _checks(runs, config, ref)
    table = format_table(runs, config.models, config.protocols)
    files = _plots(runs, config, out)
    settings = _settings(config)
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
        "validation after early stopping, while the validation curves below show each epoch before that choice.",
        "",
        table, "", "## Checks", "", _format_checks(checks) or (
            f"(no checks: they compare {_label(config.ours)} (--ours) with the ID-only models, and these runs do not "
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
