"""The report's checks for our model: the win over the best ID-only model, a paired bootstrap over test users, and
the cold protocol's cold/warm Recall@20 for each way of ranking new items."""

from __future__ import annotations

import math

import numpy as np

from ..evaluation import paired_bootstrap
from .config import ID_ONLY, QualityConfig
from .render import ALTERNATIVE_ROWS, exposure_setting, mean_std

__all__ = ["compute_checks"]


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def _cold_warm_recall(evaluations: list[dict]) -> dict[str, float] | None:
    """Mean warm and cold test Recall@20 over runs (or their exposure evaluations), and cold over warm; ``None``
    when either group is empty in every run."""
    warm, cold = (mean_std([e["test"][g]["recall@20"] for e in evaluations]) for g in ("warm", "cold"))
    if not (warm and cold):
        return None
    return {"warm_recall@20": warm[0], "cold_recall@20": cold[0], "ratio": _ratio(cold[0], warm[0])}


def compute_checks(runs: list[dict], config: QualityConfig, reference: dict[str, float] | None) -> dict:
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
        for key, _ in ALTERNATIVE_ROWS:
            other = [r[key] for r in cold_runs if key in r]
            if other and len(other) == len(cold_runs):
                chosen = "slots" if key == "exposure_slots" else "lift"
                checks["cold_protocol"][key] = {
                    "target": other[0]["ratio"], chosen: [e[chosen] for e in other], **_cold_warm_recall(other),
                    "ndcg@10": float(np.mean([e["test"]["all"]["ndcg@10"] for e in other])),
                    **({"depth": other[0]["depth"]} if key == "exposure_slots" else {})}
    return checks
