"""The report's run cache: every finished run is one line of ``OUT/runs.jsonl``, keyed by protocol, model and seed
and by a fingerprint of the settings it depends on, so an interrupted report resumes where it stopped and runs made
with other settings are never mixed in."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from ..evaluation import TieRule
from .config import QualityConfig, is_ours

__all__ = ["append_run", "fingerprint", "load_runs", "settings_of"]

log = logging.getLogger(__name__)


def settings_of(config: QualityConfig) -> dict:
    settings = {k: v for k, v in asdict(config).items() if k != "train"}
    settings["train"] = asdict(config.train)
    settings["train"].pop("device")  # every run trains on `device` above
    return settings


def fingerprint(config: QualityConfig) -> str:
    """What a run's result depends on (not which models or seeds are listed): runs with another fingerprint are
    retrained rather than reused."""
    settings = settings_of(config)
    for key in ("models", "seeds", "protocols", "ours", "bootstrap_resamples", "threads", "jobs", "device"):
        settings.pop(key)
    settings["train"].pop("show_progress")
    # max_len moved from the training settings to the model's; runs made before keep their fingerprint
    settings["train"]["max_len"] = settings["train"]["model"].pop("max_len")
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


def load_runs(path: Path, fingerprint: str, other_settings: set | None = None,
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


def append_run(path: Path, run: dict) -> None:
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
