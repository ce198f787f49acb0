"""embed_catalog end to end on real MovieLens rows and posters: incremental runs, bad rows, interruption."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mmrec import Store
from mmrec.embed import EmbedConfig, embed_catalog

from .conftest import ASSETS, REPO

SCRIPT = REPO / "scripts" / "embed_catalog.py"


def _slice(n: int, start: int = 0) -> pd.DataFrame:
    items = pd.read_csv(ASSETS / "items.csv", dtype=str, keep_default_na=False)
    with_poster = items[items.image_path != ""]
    return with_poster.iloc[start : start + n].reset_index(drop=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, posters, text_encoder, image_encoder):
    """First run, identical second run, then a 200-row catalogue with three bad rows, into one store."""
    folder = tmp_path_factory.mktemp("embed")
    store = Store(folder / "store")
    catalog = _slice(200)
    catalog.to_csv(folder / "catalog.csv", index=False)
    # the posters this catalogue names, in a root the test owns: only files inside the images root are read
    root = folder / "posters"
    root.mkdir()
    for name in catalog.image_path:
        shutil.copy(posters / name, root / name)
    config = EmbedConfig(images_root=root, text_columns=["title", "genres"])
    encoders = dict(text_encoder=text_encoder, image_encoder=image_encoder)
    first = embed_catalog(folder / "catalog.csv", store, config, **encoders)
    second = embed_catalog(folder / "catalog.csv", store, config, **encoders)

    (root / "corrupt.jpg").write_bytes((posters / "1.jpg").read_bytes()[:300] + b"\x00garbage" * 40)
    bad = catalog.copy()
    bad.loc[0, "image_path"] = "corrupt.jpg"
    bad.loc[1, "image_path"] = "does-not-exist.jpg"
    bad.loc[2, ["item_id", "title", "year", "genres", "tags", "image_path"]] = ["999999", "", "", "", "", ""]
    bad.to_csv(folder / "bad.csv", index=False)
    third = embed_catalog(folder / "bad.csv", store, config, **encoders)
    return store, catalog, bad, first, second, third


def test_first_run_embeds_every_item_with_both_modalities(runs):
    store, catalog, _, first, _, _ = runs
    assert (first.embedded, first.unchanged, first.text_only, first.image_only) == (200, 0, 0, 0)
    assert first.rejected == []
    item_id = catalog.item_id[5]
    assert store.stored_modalities()[item_id] == {"image", "text"}
    assert store.titles([item_id]) == {item_id: catalog.title[5]}
    ids, text, present = store.feature_matrix("text")
    assert len(ids) == 200 and text.shape == (200, 384) and present.all()
    assert set(store.encoders()) == {"text", "image"}


def test_second_run_does_no_work(runs):
    second = runs[4]
    assert (second.embedded, second.unchanged) == (0, 200)


def test_bad_images_keep_stored_features_and_bad_rows_are_rejected_with_reasons(runs):
    store, catalog, bad, _, _, third = runs
    assert [r["item_id"] for r in third.rejected] == ["999999"]
    assert "no text and no image" in third.rejected[0]["reason"]
    # both items already had a poster from the first run: it is kept, not replaced by nothing
    assert third.text_only == 0 and third.embedded == 0 and third.unchanged == 199 and third.images_kept == 2
    reasons = {w["item_id"]: w["reason"] for w in third.warnings}
    assert "unreadable image" in reasons[bad.item_id[0]] and "not found" in reasons[bad.item_id[1]]
    assert "BytesIO" not in reasons[bad.item_id[0]]
    modalities = store.stored_modalities()
    for item_id in bad.item_id[:2]:
        assert modalities[item_id] == {"image", "text"}
    stored = set(store.item_ids())
    assert sum(i in stored for i in bad.item_id) == 199
    assert "999999" not in modalities and "999999" not in store.item_hashes()
    with pytest.raises(KeyError, match="999999"):
        store.titles(["999999"])


def test_script_prints_json_and_documented_exit_status(runs, tmp_path, posters):
    store, *_ = runs
    folder = store.path.parent
    args = [sys.executable, str(SCRIPT), str(folder / "bad.csv"), "--store", str(store.path),
            "--images-root", str(posters), "--text-columns", "title,genres", "--json"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr  # finished, some rows rejected
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["embedded"] == 0 and summary["unchanged"] == 199
    assert summary["rejected"][0]["item_id"] == "999999"
    missing = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope.csv"), "--store", str(tmp_path)],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "nope.csv: no such file" in missing.stderr


def test_catalogue_errors_name_the_row(tmp_path):
    (tmp_path / "dup.csv").write_text("item_id,title\n1,a\n2,b\n1,c\n")
    with pytest.raises(ValueError, match=r"'1' appears more than once \(data rows \[1, 3\]\)"):
        embed_catalog(tmp_path / "dup.csv", tmp_path / "s", EmbedConfig(use_images=False))
    (tmp_path / "noid.csv").write_text("id,title\n1,a\n")
    with pytest.raises(ValueError, match="no 'item_id' column"):
        embed_catalog(tmp_path / "noid.csv", tmp_path / "s", EmbedConfig(use_images=False))


def test_jsonl_and_parquet_catalogues(tmp_path, text_encoder):
    frame = _slice(3)[["item_id", "title", "genres"]]
    frame.to_json(tmp_path / "c.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "c.parquet")
    config = EmbedConfig(use_images=False)
    assert embed_catalog(tmp_path / "c.jsonl", tmp_path / "s", config, text_encoder=text_encoder).embedded == 3
    assert embed_catalog(tmp_path / "c.parquet", tmp_path / "s", config, text_encoder=text_encoder).unchanged == 3


# Runs embed_catalog in a child process and SIGKILLs it at a chosen point: the real catalogue reader, encoder and
# store run; only the store's put_items (one call per chunk) is wrapped to know where the run is.
#   after_commit: right after the 2nd chunk's transaction committed.
#   mid_chunk:    inside the 3rd chunk's transaction, as its 5th item is written (4 items and their features
#                 already written, nothing of the chunk committed).
KILL_CHILD = r"""
import os, signal, sys
from mmrec import Store
from mmrec.embed import EmbedConfig, embed_catalog

catalog, store_dir, point, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = Store(store_dir)
put_items, calls, inserted = store.put_items, [], []


def kill(message):
    print(message, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def trace(sql):
    if sql.startswith("INSERT OR REPLACE INTO items"):
        inserted.append(sql)
        if len(inserted) == 5:
            kill(f"killed in_transaction={store.db.in_transaction} after {len(inserted) - 1} items written")


def hooked_put_items(rows):
    calls.append(len(rows))
    if point == "mid_chunk" and len(calls) == 3:
        store.db.set_trace_callback(trace)
    put_items(rows)
    if point == "after_commit" and len(calls) == 2:
        kill(f"killed after chunks of {calls} committed")


store.put_items = hooked_put_items
embed_catalog(catalog, store, EmbedConfig(use_images=False, text_columns=["title", "genres"], chunk_size=chunk))
print("finished without being killed", flush=True)
"""


@pytest.mark.parametrize("point, message", [
    ("after_commit", "killed after chunks of [8, 8] committed"),
    ("mid_chunk", "killed in_transaction=True after 4 items written"),
], ids=["after_commit", "mid_chunk"])
def test_killed_run_keeps_exactly_the_committed_chunks_and_rerun_embeds_only_the_rest(
        tmp_path, text_encoder, monkeypatch, point, message):
    from mmrec.io.catalog import read_catalog

    chunk = 8
    _slice(5 * chunk)[["item_id", "title", "genres"]].to_csv(tmp_path / "catalog.csv", index=False)
    rows = read_catalog(tmp_path / "catalog.csv", ["title", "genres"], use_images=False)
    store_dir = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    child = subprocess.run([sys.executable, "-c", KILL_CHILD, str(tmp_path / "catalog.csv"), str(store_dir), point,
                            str(chunk)], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert child.returncode == -signal.SIGKILL, (child.returncode, child.stdout, child.stderr[-3000:])
    assert child.stdout.strip().splitlines()[-1] == message

    committed = rows[: 2 * chunk]  # the first two chunks, nothing of the third
    store = Store(store_dir)
    assert store.item_ids() == [r.item_id for r in committed]
    ids, vectors, present = store.feature_matrix("text")
    assert present.all() and vectors.shape == (len(committed), 384)
    np.testing.assert_allclose(vectors, text_encoder.encode([r.text for r in committed], show_progress=False),
                               atol=1e-5)
    stored_text = dict(store.db.execute("SELECT item_id, text FROM items"))
    assert [stored_text[r.item_id] for r in committed] == [r.text for r in committed]

    encoded = []
    real_encode = text_encoder.encode

    def recording_encode(texts, **kwargs):  # the real encoder, with a record of what it was asked to encode
        encoded.extend(texts)
        return real_encode(texts, **kwargs)

    monkeypatch.setattr(text_encoder, "encode", recording_encode)
    report = embed_catalog(tmp_path / "catalog.csv", store, EmbedConfig(use_images=False,
                           text_columns=["title", "genres"], chunk_size=chunk), text_encoder=text_encoder)
    assert (report.unchanged, report.embedded) == (len(committed), len(rows) - len(committed))
    assert encoded == [r.text for r in rows[len(committed):]]  # committed items are not encoded again
    ids, vectors, present = store.feature_matrix("text")
    assert ids == [r.item_id for r in rows] and present.all()
    store.close()
