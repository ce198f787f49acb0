"""What serving trusts: reads never write the store, the saved model's files are checked as a whole, and bad
arguments (a corrupt database, a device that does not exist) are errors naming what is wrong."""

import json

import numpy as np
import pytest

from mmrec import ModelLoadError, Recommender, Store, evaluate_store
from mmrec.cli import EXIT_FAILED, main
from mmrec.store import UserState

from ..conftest import copy_store
from .conftest import PROBE, history_of


def test_reads_recompute_a_stale_or_missing_state_in_memory_and_never_write(trained, tmp_path):
    _, store_dir, _, _ = trained
    copy = copy_store(store_dir, tmp_path / "store")
    rec = Recommender.load(copy, device="cpu")
    stale, missing = "7", "8"
    logs = rec.store.user_events([stale, missing])
    state = rec.store.get_users([stale])[stale]
    rec.store.put_users([UserState(stale, "an-older-model", np.zeros_like(state.state), np.zeros_like(state.interest),
                                   1, 1)])
    expected = rec.score(history=history_of(logs[stale]), item_ids=PROBE)
    np.testing.assert_allclose(rec.score(stale, PROBE), expected, rtol=1e-5, atol=1e-6)
    assert rec.recommend(stale, k=5)
    stored = Store(copy).get_users([stale])[stale]  # before: reading the stale user rebuilt and committed its state
    assert stored.model == "an-older-model" and not stored.interest.any()
    # a logged user without a state (none of this mmrec's writers leaves one) is read from the log too
    rec.store.db.execute("DELETE FROM users WHERE user_id = ?", (missing,))
    expected = rec.score(history=history_of(logs[missing]), item_ids=PROBE)
    np.testing.assert_allclose(rec.score(missing, PROBE), expected, rtol=1e-5, atol=1e-6)
    assert missing not in Store(copy).get_users([missing])


def _rotate_item_ids(config_path):
    meta = json.loads(config_path.read_text())
    meta["item_ids"] = meta["item_ids"][1:] + meta["item_ids"][:1]
    config_path.write_text(json.dumps(meta, indent=2))


def test_an_edited_config_json_is_refused_naming_it(trained, tmp_path):
    _, store_dir, _, _ = trained
    copy = copy_store(store_dir, tmp_path / "store")
    _rotate_item_ids(copy / "model" / "config.json")  # before: loaded silently, every item scored as its neighbour
    with pytest.raises(ModelLoadError, match=r"config\.json does not belong to the saved model"):
        Recommender.load(copy, device="cpu")
    assert json.loads((copy / "model" / "manifest.json").read_text())["sha256"].keys() == {
        "model.safetensors", "config.json"}


def test_a_model_saved_before_the_manifest_loads_and_checks_its_weights(trained, tmp_path):
    _, store_dir, rec, _ = trained
    copy = copy_store(store_dir, tmp_path / "store")
    # as saved before the manifest existed: config.json holds weights_sha256
    (copy / "model" / "manifest.json").unlink(missing_ok=True)
    np.testing.assert_allclose(Recommender.load(copy, device="cpu").score("7", PROBE), rec.score("7", PROBE),
                               rtol=1e-6)
    weights = copy / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ModelLoadError, match=r"model\.safetensors does not belong to"):
        Recommender.load(copy, device="cpu")


def test_a_corrupt_database_is_an_error_naming_the_file(trained, tmp_path, capsys):
    folder, store_dir, _, _ = trained
    copy = copy_store(store_dir, tmp_path / "store")
    database = copy / "mmrec.sqlite"
    database.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match=str(database)):
        Store(copy)
    code = main(["evaluate", "--store", str(copy), "--interactions", str(folder / "interactions.csv")])
    assert code == EXIT_FAILED
    assert str(database) in capsys.readouterr().err


def test_a_device_that_does_not_exist_is_a_value_error_naming_it(trained):
    folder, store_dir, _, _ = trained
    with pytest.raises(ValueError, match="banana"):
        Recommender.load(store_dir, device="banana")
    with pytest.raises(ValueError, match="banana"):
        evaluate_store(store_dir, folder / "interactions.csv", device="banana")
