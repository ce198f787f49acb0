"""Rendering the report: the markdown table, the checks in words, the plots, and the reference table reader."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from ..beyond import BEYOND_METRICS
from ..evaluation import METRICS
from .config import QualityConfig, is_ours

__all__ = ["ALTERNATIVE_ROWS", "exposure_setting", "format_checks", "format_table", "label", "mean_std",
           "read_reference", "write_plots"]

log = logging.getLogger(__name__)


def mean_std(values: list[float | None]) -> tuple[float, float] | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return float(np.mean(present)), float(np.std(present, ddof=1)) if len(present) > 1 else 0.0


def _cell(stat: tuple[float, float] | None) -> str:
    return "–" if stat is None else f"{stat[0]:.4f} ± {stat[1]:.4f}"


def label(model: str) -> str:
    return f"ours: {model}" if is_ours(model) else model


# Other rankings of new items a cold-protocol run of ours is evaluated with: (key in the run, label suffix).
ALTERNATIVE_ROWS = (("no_exposure", "no new-item exposure target"), ("exposure", "lift for cold/warm >= {ratio:g}"),
                     ("exposure_slots", "new-item places for cold/warm >= {ratio:g}"))


def exposure_setting(ratio: float, exposure: str) -> str:
    """In words: how new items are ranked by a model trained with this ``new_item_recall_ratio`` and exposure."""
    if ratio == 0:
        return "no new-item exposure target (the lift validation NDCG@10 chooses)"
    how = "new-item places" if exposure == "slots" else "the new-item lift"
    return f"{how} for cold/warm >= {ratio:g}"


def evaluations(runs: list[dict], protocol: str, model: str) -> list[tuple[str, list[tuple[dict, dict]]]]:
    """A model's rows under a protocol: (label, [(run, evaluation)]), where the evaluation holds the test metrics
    of the run as trained or, in further rows, of the other ways of ranking new items it was evaluated with."""
    rows = [r for r in runs if r["protocol"] == protocol and r["model"] == model]
    if not rows:
        return []
    evaluations = [(label(model), [(r, r) for r in rows])]
    for key, suffix in ALTERNATIVE_ROWS:
        pairs = [(r, r[key]) for r in rows if key in r]
        if pairs:
            evaluations.append((f"{label(model)}, {suffix.format(ratio=pairs[0][1]['ratio'])}", pairs))
    return evaluations


def format_table(runs: list[dict], models: tuple[str, ...], protocols: tuple[str, ...]) -> str:
    """Markdown: one row per protocol and model, test metrics warm and cold and the beyond-accuracy metrics of all
    users' lists (:mod:`mmrec.beyond`; "–" for runs recorded before them) as mean ± std over seeds."""
    header = ["protocol", "model", "seeds"] + [f"{g} {m}" for g in ("warm", "cold") for m in METRICS]
    header += ["all ndcg@10", *BEYOND_METRICS, "valid ndcg@10", "epochs (best)", "s/epoch", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for protocol in protocols:
        for model in models:
            for label, pairs in evaluations(runs, protocol, model):
                cells = [protocol, label, str(len(pairs))]
                for group in ("warm", "cold"):
                    cells += [_cell(mean_std([e["test"][group][m] for _, e in pairs])) for m in METRICS]
                cells.append(_cell(mean_std([e["test"]["all"]["ndcg@10"] for _, e in pairs])))
                cells += [_cell(mean_std([e["test"].get("beyond", {}).get(m) for _, e in pairs]))
                          for m in BEYOND_METRICS]
                cells.append(_cell(mean_std([e["valid_ndcg@10"] for _, e in pairs])))
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


def format_checks(checks: dict) -> str:
    lines = []
    if "best_id_only" in checks:
        b = checks["best_id_only"]
        lines.append(f"- {label(checks['ours'])}: test NDCG@10 {checks['ours_ndcg@10']:.4f} = {b['ratio']:.2f}x the "
                     f"best ID-only model here ({label(b['model'])}, {b['ndcg@10']:.4f}); target >= 1.10x.")
    if "best_reference" in checks:
        r = checks["best_reference"]
        lines.append(f"- vs the reference file's best sequential model ({r['model']}, {r['ndcg@10']:.4f}): "
                     f"{r['ratio']:.2f}x; target >= 1.10x.")
    if "bootstrap" in checks:
        b = checks["bootstrap"]
        lines.append(f"- Paired bootstrap over test users ({b['resamples']:,} resamples, per-user NDCG@10 averaged "
                     f"over seeds) vs {label(b['vs'])}: mean difference {b['mean_diff']:+.4f}, 95% interval "
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
        lines.append(f"- Cold protocol, {label(checks['ours'])} as trained ({checks['trained_exposure']}{places}): "
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


def write_plots(runs: list[dict], config: QualityConfig, out: Path) -> list[Path]:
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
        bars = [e for m in models for e in evaluations(runs, protocol, m)]
        x = np.arange(len(bars))
        for col, metric in enumerate(("ndcg@10", "recall@20")):
            ax = axes[row][col]
            for shift, group in ((-0.2, "warm"), (0.2, "cold")):
                stats = [mean_std([e["test"][group][metric] for _, e in pairs]) for _, pairs in bars]
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
            ax.plot(range(1, len(run["valid_curve"]) + 1), run["valid_curve"], label=label(m))
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
