"""The cold-start protocol and the quality report, on a real slice of MovieLens (text features)."""

import json
from dataclasses import replace

import numpy as np
import pytest

from mmrec import Store
from mmrec.data import ItemIndex, hold_out_items, leave_one_out, load_interactions
from mmrec.evaluation import paired_bootstrap
from mmrec.networks.model import ModelConfig
from mmrec.report import QualityConfig, read_reference, run_report
from mmrec.report.cache import fingerprint, load_runs
from mmrec.train.config import TrainConfig
from mmrec.train.data import load_training_data

from ..conftest import ASSETS, SHARED, embed_text_only, write_movielens_slice


@pytest.fixture(scope="module")
def split():
    items = ItemIndex.from_catalog(ASSETS / "items.csv")
    return leave_one_out(load_interactions(ASSETS / "interactions.csv", items))


def test_hold_out_removes_a_seeded_tenth_of_items_from_training_only(split):
    reduced, held = hold_out_items(split, 0.1, seed=3)
    rated = np.unique(np.concatenate([split.train.item, split.valid_item, split.test_item]))
    assert held.sum() == round(0.1 * len(rated)) and held[rated].sum() == held.sum()
    assert not held[reduced.train.item].any()
    # every event of a kept item survives, in order
    kept = ~held[split.train.item]
    np.testing.assert_array_equal(reduced.train.item, split.train.item[kept])
    np.testing.assert_array_equal(reduced.train.lengths, np.bincount(split.train.row_of[kept], minlength=610))
    np.testing.assert_array_equal(reduced.test_item, split.test_item)
    np.testing.assert_array_equal(reduced.valid_item, split.valid_item)
    cold = set(reduced.cold_users("test").tolist())
    assert set(np.flatnonzero(held[split.test_item]).tolist()) <= cold
    assert len(cold) > 40  # ~10% of 610 users, plus the items that are cold anyway
    _, same = hold_out_items(split, 0.1, seed=3)
    np.testing.assert_array_equal(same, held)
    assert (hold_out_items(split, 0.1, seed=4)[1] != held).any()
    with pytest.raises(ValueError, match="fraction"):
        hold_out_items(split, 1.0)


@pytest.fixture(scope="module")
def slice_store(tmp_path_factory, text_encoder):
    """The 300 most-rated movies and users 1-80's ratings and tags of them, text features embedded."""
    folder = write_movielens_slice(tmp_path_factory.mktemp("report"), n_items=300, max_user=80)
    embed_text_only(folder, folder / "store", text_encoder)
    return folder


def test_cold_protocol_hides_held_out_items_and_their_tags(slice_store, text_encoder):
    store = Store(slice_store / "store")
    full = load_training_data(store, slice_store / "interactions.csv", slice_store / "tags.csv", text_encoder)
    cold = load_training_data(store, slice_store / "interactions.csv", slice_store / "tags.csv", text_encoder,
                              hold_out=0.1, hold_out_seed=0)
    held = cold.held_out
    assert full.held_out is None and held.sum() == 30
    assert not cold.features.known[torch_index(held)].any()  # no ID token for held-out items
    b = cold.behaviour
    assert not held[b.item[~b.is_interaction]].any()  # their tags are gone too
    assert held[full.behaviour.item[~full.behaviour.is_interaction]].any()


def torch_index(mask):
    import torch

    return torch.from_numpy(np.flatnonzero(mask))


def test_report_writes_table_checks_plots_and_resumes(slice_store, tmp_path):
    store = Store(slice_store / "store")
    config = QualityConfig(models=("pop", "id", "text+id"), seeds=(0, 1), ours="text+id",
                           train=TrainConfig(epochs=2, patience=1, show_progress=False), bootstrap_resamples=200)
    finished = []
    summary = run_report(store, slice_store / "interactions.csv", tmp_path, config, slice_store / "tags.csv",
                         on_run=finished.append)
    assert len(finished) == 2 * 3 * 2  # protocols x models x seeds
    report = (tmp_path / "report.md").read_text()
    assert "| cold | ours: text+id | 2 |" in report and "| standard | pop | 2 |" in report
    assert (tmp_path / "metrics.png").stat().st_size > 10_000 and (tmp_path / "valid_curves.png").is_file()
    checks = json.loads((tmp_path / "results.json").read_text())["checks"]
    assert checks["best_id_only"]["model"] in ("pop", "id")
    _assert_bootstrap_matches_stored_runs(checks, tmp_path / "runs.jsonl", ours="text+id", resamples=200)
    assert "Seed by seed" in report and "seed 1 " in report
    assert all(n > 0 for n in checks["cold_protocol"]["n_cold_users"])
    # the cold protocol ranks new items as trained (new-item places by default) and, from the same trained models,
    # with no exposure target and with the lift chosen for the exposure target
    assert "Our models' rows rank new items as trained: new-item places for cold/warm >= 0.5" in report
    assert "| cold | ours: text+id, no new-item exposure target | 2 |" in report
    assert "| cold | ours: text+id, lift for cold/warm >= 0.5 | 2 |" in report
    assert "| cold | ours: id, lift for cold/warm >= 0.5 | 2 |" in report
    assert "| cold | ours: text+id, new-item places" not in report  # that is how the rows without a suffix rank
    assert "exposure target |" not in report.split("| cold |")[0]  # not in the standard protocol
    cold = checks["cold_protocol"]
    assert cold["exposure"]["target"] == 0.5 and len(cold["exposure"]["lift"]) == 2
    assert all(lift >= 0 for lift in cold["exposure"]["lift"] + cold["no_exposure"]["lift"])
    assert cold["no_exposure"]["target"] == 0.0 and all(0 <= slots <= 10 for slots in cold["slots"])
    assert "The same trained models with no new-item exposure target" in report
    built = ("new_item_text_only", "new_item_neighbours")
    for run in summary.runs:
        ours_cold = run["model"] in ("id", "text+id") and run["protocol"] == "cold"
        assert ("exposure" in run) == ("no_exposure" in run) == ours_cold and "exposure_slots" not in run
        assert (run.get("new_item_bias") or 0.0) == 0.0  # places, not lifts
        if ours_cold:
            untargeted = run["no_exposure"]
            # places come after the trained items' best, so those keep their recall@10, where new items are built
            # the same way (they share the re-ranker's candidates with trained ones) and not lifted among them
            assert run["test"]["warm"]["recall@10"] >= untargeted["test"]["warm"]["recall@10"] or \
                untargeted["lift"] > 0 or any(run[k] != untargeted[k] for k in built)
            assert run["exposure"]["test"]["n"] == run["test"]["n"]
            if run["exposure"]["lift"] == untargeted["lift"] and all(run["exposure"][k] == untargeted[k] for k in built):
                assert run["exposure"]["test"] == untargeted["test"]  # the same ranking
        if run["model"] == "pop" and run["protocol"] == "cold":
            assert run["test"]["cold"]["recall@20"] == 0.0  # never-trained items have no popularity
    again = []
    run_report(store, slice_store / "interactions.csv", tmp_path, config, slice_store / "tags.csv",
               on_run=again.append)
    assert again == []  # every run reused from runs.jsonl
    runs_file = tmp_path / "runs.jsonl"
    runs_file.write_bytes(runs_file.read_bytes()[:-200])  # killed while writing the last run
    run_report(store, slice_store / "interactions.csv", tmp_path, config, slice_store / "tags.csv",
               on_run=again.append)
    assert len(again) == 1  # only the run cut short is trained again
    lines = runs_file.read_text().splitlines()
    assert json.loads(lines[-1])["seed"] == again[0]["seed"]  # appended on a line of its own
    assert sum(1 for line in lines if not line.endswith("}")) == 1
    again.clear()
    rebuilt = run_report(store, slice_store / "interactions.csv", tmp_path, QualityConfig(
        models=("pop", "id", "text+id", "bpr"), seeds=(0, 1), ours="text+id", train=config.train,
        bootstrap_resamples=200), slice_store / "tags.csv", on_run=again.append, train=False)
    assert again == [] and len(rebuilt.runs) == 12  # nothing trained: bpr has no runs, so no row
    one_epoch = replace(config.train, epochs=1)
    run_report(store, slice_store / "interactions.csv", tmp_path, QualityConfig(
        models=("id",), seeds=(0,), protocols=("standard",), ours="id", train=one_epoch,
        bootstrap_resamples=200), on_run=again.append)
    assert len(again) == 1  # other settings: retrained, not reused
    # rebuilding without the options the runs were made with would give an empty table: refused, naming the way out
    with pytest.raises(ValueError, match=r"runs asked for exist only with other settings .*--epochs"):
        run_report(store, slice_store / "interactions.csv", tmp_path, QualityConfig(
            models=("pop", "text+id"), seeds=(0, 1), ours="text+id", train=TrainConfig(epochs=7),
            bootstrap_resamples=200), slice_store / "tags.csv", train=False)


def _assert_bootstrap_matches_stored_runs(checks: dict, runs_file, ours: str, resamples: int) -> None:
    """The report's bootstrap check is the paired bootstrap of ``ours`` against the best ID-only model, on the
    per-user test NDCG@10 stored in runs.jsonl (standard protocol, averaged over seeds, users in the same order)."""
    boot = checks["bootstrap"]
    assert boot["vs"] == checks["best_id_only"]["model"] and boot["resamples"] == resamples
    runs = [json.loads(line) for line in runs_file.read_text().splitlines()]
    per_user, per_seed = {}, {}
    for model in (ours, boot["vs"]):
        rows = sorted((r for r in runs if r["protocol"] == "standard" and r["model"] == model), key=lambda r: r["seed"])
        assert [r["seed"] for r in rows] == [0, 1]
        per_seed[model] = [np.asarray(r["per_user_ndcg@10"]) for r in rows]
        per_user[model] = np.mean(per_seed[model], axis=0)
    # seed by seed: the same bootstrap on one run of each
    assert [p["seed"] for p in boot["per_seed"]] == [0, 1]
    for seed, row in enumerate(boot["per_seed"]):
        one = paired_bootstrap(per_seed[ours][seed], per_seed[boot["vs"]][seed], n_resamples=resamples, seed=0)
        assert row["mean_diff"] == pytest.approx(per_seed[ours][seed].mean() - per_seed[boot["vs"]][seed].mean())
        assert row["ci95"] == pytest.approx([one.ci_low, one.ci_high], abs=1e-12)
        assert row["p_better"] == pytest.approx(one.p_better, abs=1e-12)
    a, b = per_user[ours], per_user[boot["vs"]]
    # the observed difference is the difference of the table's all-user means, with ours first
    assert boot["mean_diff"] == pytest.approx(a.mean() - b.mean(), abs=1e-12)
    assert boot["mean_diff"] == pytest.approx(checks["ours_ndcg@10"] - checks["best_id_only"]["ndcg@10"], abs=1e-9)
    expected = paired_bootstrap(a, b, n_resamples=resamples, seed=0)
    assert boot["ci95"] == pytest.approx([expected.ci_low, expected.ci_high], abs=1e-12)
    assert boot["p_better"] == pytest.approx(expected.p_better, abs=1e-12)
    assert boot["ci95"][0] < boot["ci95"][1]  # users differ: a real interval, not a point


def _ndcg10_column(path) -> dict[str, float]:
    """Independent reading of a reference table: the header row is the one whose first cell is ``model``; each
    following table row gives ``name (note)`` -> its NDCG@10 cell, named by its lower-cased text before ``(``."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.replace(" ", "").lower().startswith("|model|"))
    header = [c.strip() for c in lines[start].strip().strip("|").split("|")]
    column = header.index("NDCG@10")
    values = {}
    for line in lines[start + 2:]:  # after the |---| separator
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        values[cells[0].split("(")[0].strip().lower()] = float(cells[column])
    return values


def test_read_reference_reads_every_models_test_ndcg10_from_the_shared_table():
    path = SHARED / "baselines" / "ml-latest-small.md"
    if not path.is_file():
        pytest.skip(f"needs {path} (the team's shared reference table beside the repo); not present on this machine")
    expected = _ndcg10_column(path)
    assert {"pop", "bpr", "gru4rec", "sasrec"} <= set(expected)
    assert read_reference(path) == expected


def test_read_reference_finds_the_ndcg10_column_of_the_first_table_that_has_one(tmp_path):
    path = tmp_path / "ref.md"
    path.write_text("intro\n\n| run | NDCG@20 |\n|---|---|\n| x | 0.9 |\n\n"
                    "| model | NDCG@20 | Recall@10 | NDCG@10 | MRR@10 |\n|:--|--:|--:|--:|--:|\n"
                    "| Pop (true popularity) | 0.1 | 0.2 | 0.3 | 0.4 |\n| SASRec | 0.5 | 0.6 | 0.7 | 0.8 |\n\n"
                    "after\n\n| model | NDCG@10 |\n|---|---|\n| later | 0.01 |\n")
    assert read_reference(path) == {"pop": 0.3, "sasrec": 0.7}


def _carried(**policy) -> ModelConfig:
    """A model config read from a save of before the new-item policy was kept apart, with the ``new_item_*``
    outputs of calibration it then held: they are dropped, not settings."""
    return ModelConfig.from_dict({**ModelConfig().to_dict(), **{f"new_item_{k}": v for k, v in policy.items()}})


def test_where_a_run_trains_does_not_change_its_fingerprint():
    on_gpu = QualityConfig(device="cuda", train=TrainConfig(epochs=60, patience=8, device="cuda"))
    on_cpu = QualityConfig(device="cpu", threads=2, jobs=3, train=TrainConfig(epochs=60, patience=8, device="cpu"))
    assert fingerprint(on_gpu) == fingerprint(on_cpu)
    assert fingerprint(on_cpu) != fingerprint(QualityConfig(train=TrainConfig(epochs=30, patience=8)))
    # training chooses how new items are lifted and built, whatever the config carried in
    chosen = TrainConfig(epochs=60, patience=8, model=_carried(bias=1.0, logit_bias=0.5, text_only=True))
    assert fingerprint(QualityConfig(train=chosen)) == fingerprint(on_cpu)


def test_runs_trained_in_worker_processes_equal_runs_trained_one_by_one(slice_store, tmp_path):
    """``jobs`` only changes how long the report takes: at the same thread count a short CPU run repeats exactly."""
    store = Store(slice_store / "store")
    config = QualityConfig(models=("pop", "bpr", "text+id"), seeds=(0,), ours="text+id", threads=1,
                           train=TrainConfig(epochs=2, patience=2, show_progress=False), baseline_epochs=3,
                           bootstrap_resamples=100, device="cpu")
    serial = run_report(store, slice_store / "interactions.csv", tmp_path / "serial", config, slice_store / "tags.csv")
    finished = []
    parallel = run_report(store, slice_store / "interactions.csv", tmp_path / "parallel", replace(config, jobs=2),
                          slice_store / "tags.csv", on_run=finished.append)
    assert len(finished) == len(parallel.runs) == 6  # protocols x models, each recorded as its worker finished
    timings = {"seconds_per_epoch", "train_seconds", "wall_seconds"}
    assert [{k: v for k, v in run.items() if k not in timings} for run in parallel.runs] == [
        {k: v for k, v in run.items() if k not in timings} for run in serial.runs]
    # standard; cold with the NDCG@10 lift, the exposure lift and new-item places
    assert (tmp_path / "parallel" / "report.md").read_text().count("| ours: text+id") == 4
    with pytest.raises(ValueError, match="jobs"):
        QualityConfig(jobs=0)


class _EndsTheProcessThatUnpicklesIt:
    """Stands in for a worker killed from outside (the kernel's out-of-memory killer): unpickling it exits."""

    def __reduce__(self):
        import os

        return os._exit, (3,)


def test_a_failed_or_killed_worker_names_the_runs_it_leaves_unfinished(slice_store, tmp_path):
    from mmrec.report.runner import Source, train_in_workers

    config = QualityConfig(models=("pop",), seeds=(0,), jobs=2, threads=1, device="cpu")
    pending = [("standard", 0, "pop"), ("cold", 0, "pop")]
    recorded = []
    store = Store(slice_store / "store")
    missing = Source(store, tmp_path / "gone.csv", None, "error")
    with pytest.raises(RuntimeError, match=r"seed 0: pop failed: .*gone\.csv"):
        train_in_workers(pending, missing, config, lambda *run: recorded.append(run))
    killed = Source(store, _EndsTheProcessThatUnpicklesIt(), None, "error")
    with pytest.raises(RuntimeError, match=r"worker process was killed .* cold protocol, seed 0: pop; "
                                           r"standard protocol, seed 0: pop\. Finished runs are kept"):
        train_in_workers(pending, killed, config, lambda *run: recorded.append(run))
    assert recorded == []


def test_the_exposure_target_is_a_setting_runs_depend_on():
    assert fingerprint(QualityConfig(exposure_ratio=0.0)) != fingerprint(QualityConfig())
    with pytest.raises(ValueError, match="exposure_ratio"):
        QualityConfig(exposure_ratio=-0.5)


def test_text_runs_from_before_the_new_item_content_choices_are_retrained(tmp_path, caplog):
    chosen = QualityConfig(train=replace(QualityConfig().train, model=_carried(text_only=True, neighbours=20)))
    assert fingerprint(chosen) == fingerprint(QualityConfig())  # outputs of calibration, not settings
    runs = tmp_path / "runs.jsonl"
    old = {"protocol": "cold", "seed": 0, "fingerprint": "f"}
    both = {"new_item_text_only": False, "new_item_neighbours": 0}
    runs.write_text("\n".join(json.dumps({**old, "model": m, **extra}) for m, extra in [
        ("text+image+id", {"new_item_neighbours": 20}), ("text+image", both), ("text", {"new_item_text_only": False}),
        ("image+id", {}), ("text+id", {"new_item_neighbours": 0}), ("sasrec", {})]))
    outdated: set = set()
    # text alone is chosen for models reading text and images, neighbours for models reading text
    assert sorted(load_runs(runs, "f", outdated=outdated)) == [
        ("cold", "image+id", 0), ("cold", "sasrec", 0), ("cold", "text+id", 0), ("cold", "text+image", 0)]
    assert outdated == {("cold", "text+image+id", 0), ("cold", "text", 0)}
    config = QualityConfig(models=("text+image+id",), seeds=(0,), protocols=("cold",))
    runs.write_text(json.dumps({**old, "model": "text+image+id", "fingerprint": fingerprint(config)}) + "\n")
    with pytest.raises(ValueError,
                       match=r"\(1 of them predate training's choice of new items' content on validation\)"):
        run_report(None, None, tmp_path, config, train=False)


def test_popularity_runs_recorded_under_the_older_tie_rule_are_redone(tmp_path):
    runs = tmp_path / "runs.jsonl"
    old = {"protocol": "standard", "seed": 0, "fingerprint": "f"}
    runs.write_text("\n".join(json.dumps({**old, "model": m, **extra}) for m, extra in [
        ("pop", {}), ("id", {}), ("bpr", {"tie_rule": "expected"})]) + "\n")
    assert sorted(load_runs(runs, "f")) == [("standard", "bpr", 0), ("standard", "id", 0)]
    runs.write_text(json.dumps({**old, "model": "pop", "tie_rule": "expected"}) + "\n")
    assert list(load_runs(runs, "f")) == [("standard", "pop", 0)]


def test_no_train_without_finished_runs_is_an_error_not_an_empty_report(slice_store, tmp_path):
    # a mistyped --out used to write a header-only table and exit 0
    with pytest.raises(ValueError, match=r"no finished runs of the models, seeds and protocols asked for"):
        run_report(Store(slice_store / "store"), slice_store / "interactions.csv", tmp_path / "typo",
                   QualityConfig(models=("pop",), seeds=(0,), protocols=("standard",)), train=False)
    assert not (tmp_path / "typo").exists()


def test_no_train_redoes_popularity_runs_from_before_the_tie_rule(slice_store, tmp_path):
    config = QualityConfig(models=("pop",), seeds=(0,), protocols=("standard",), bootstrap_resamples=200)
    tmp_path.joinpath("runs.jsonl").write_text(json.dumps(
        {"protocol": "standard", "model": "pop", "seed": 0, "fingerprint": fingerprint(config)}) + "\n")
    redone = []
    summary = run_report(Store(slice_store / "store"), slice_store / "interactions.csv", tmp_path, config,
                         on_run=redone.append, train=False)
    assert [(r["model"], r["tie_rule"]) for r in redone] == [("pop", "expected")]
    assert "| standard | pop | 1 |" in summary.table
