"""Quality report: every model on the identical split, 3 seeds, warm and cold, with a paired bootstrap.

Two protocols (docs/evaluation.md):

- ``standard``: chronological leave-one-out, full ranking, history excluded. "warm" = users whose test item occurs
  in training, "cold" = the rest (on ml-latest-small: items rated once, by that user, last).
- ``cold``: the same split with a seeded 10% of the rated items removed from training entirely
  (:func:`mmrec.data.split.hold_out_items`); users whose test item was held out are the cold users, ranked over the whole
  catalogue like everyone else. Our model's runs there rank new items as training chose (by default the fewest
  places at the end of every top 20 reserved for new items that give cold users a validation Recall@20 of half the
  warm users', :func:`mmrec.train.calibration.calibrate_new_item_slots`) and, from the same trained model, each other way
  too: with no exposure target (the new-item lift validation NDCG@10 chooses); with the lift chosen for the
  exposure target ``exposure_ratio`` (:func:`mmrec.train.calibration.calibrate_new_item_bias`); with new-item places for it.
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

from .config import OUR_VARIANTS, PROTOCOLS, QualityConfig, is_ours
from .render import read_reference
from .runner import ReportSummary, run_report

__all__ = ["OUR_VARIANTS", "PROTOCOLS", "QualityConfig", "ReportSummary", "is_ours", "read_reference", "run_report"]
