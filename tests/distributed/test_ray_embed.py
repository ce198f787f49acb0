"""``mmrec embed --engine ray`` on a real local Ray cluster equals the single-process embed: same hashes, same
report, vectors at cosine >= 0.9999; an interrupted store is finished by a Ray run; bad input fails alike."""

from __future__ import annotations

import json
import shutil
import textwrap

import numpy as np
import pandas as pd
import pytest

from mmrec import EmbedConfig, Store, embed_catalog
from mmrec.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main

from ..conftest import ASSETS, POSTERS, REPO
from .conftest import run_without_ray

COLUMNS = ["title", "genres"]
TEXT_ONLY = EmbedConfig(use_images=False, text_columns=COLUMNS, show_progress=False)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """300 bundled MovieLens items, and the store a single-process embed makes of them (text only)."""
    folder = tmp_path_factory.mktemp("ray-embed")
    items = pd.read_csv(ASSETS / "items.csv", dtype=str, keep_default_na=False).iloc[:300]
    items.to_csv(folder / "items.csv", index=False)
    return folder, items


@pytest.fixture(scope="module")
def local(catalog, text_encoder):
    folder, _ = catalog
    report = embed_catalog(folder / "items.csv", folder / "local", TEXT_ONLY, text_encoder=text_encoder)
    return Store(folder / "local"), report


def assert_same_features(expected: Store, got: Store, modality: str = "text") -> None:
    assert got.item_hashes() == expected.item_hashes()
    assert got.stored_modalities() == expected.stored_modalities()
    ids, want, present = expected.feature_matrix(modality)
    _, have, have_present = got.feature_matrix(modality, ids)
    np.testing.assert_array_equal(have_present, present)
    cosine = (want[present] * have[present]).sum(1) / (
        np.linalg.norm(want[present], axis=1) * np.linalg.norm(have[present], axis=1))
    assert cosine.min() >= 0.9999, cosine.min()
    assert set(got.encoders()[modality]) == set(expected.encoders()[modality])


def test_ray_embed_on_two_workers_equals_the_single_process_embed(ray_cluster, catalog, local, capsys):
    folder, _ = catalog
    code = main(["embed", str(folder / "items.csv"), "--store", str(folder / "ray"), "--text-columns", "title,genres",
                 "--no-images", "--engine", "ray", "--ray-workers", "2", "--json"])
    assert code == EXIT_OK
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected_store, expected_report = local
    assert summary == expected_report.to_dict()
    assert summary["embedded"] == 300
    assert_same_features(expected_store, Store(folder / "ray"))


def test_a_ray_run_finishes_an_interrupted_store_encoding_only_the_rest(ray_cluster, catalog, local, text_encoder):
    from mmrec.distributed import RayConfig, embed_catalog_ray

    folder, items = catalog
    # what a run killed after its first chunks leaves: the first 150 items committed
    items.iloc[:150].to_csv(folder / "first-half.csv", index=False)
    embed_catalog(folder / "first-half.csv", folder / "partial", TEXT_ONLY, text_encoder=text_encoder)
    report = embed_catalog_ray(folder / "items.csv", folder / "partial", TEXT_ONLY, RayConfig(workers=1))
    assert (report.embedded, report.unchanged, report.rejected) == (150, 150, [])
    assert_same_features(local[0], Store(folder / "partial"))
    again = embed_catalog_ray(folder / "items.csv", folder / "partial", TEXT_ONLY, RayConfig(workers=1))
    assert (again.embedded, again.unchanged) == (0, 300)


def test_ray_embed_with_images_equals_the_single_process_embed_warnings_included(ray_cluster, catalog,
                                                                                 text_encoder, image_encoder):
    if not POSTERS.is_dir():
        pytest.skip(f"needs the posters in {POSTERS} (the team's shared data folder beside the repo)")
    from mmrec.distributed import RayConfig, embed_catalog_ray

    folder, items = catalog
    root = folder / "posters"
    root.mkdir()
    subset = items[items.image_path != ""].iloc[:12].reset_index(drop=True)
    for name in subset.image_path:
        shutil.copy(POSTERS / name, root / name)
    (root / "corrupt.jpg").write_bytes((POSTERS / subset.image_path[0]).read_bytes()[:300] + b"\0garbage" * 40)
    subset.loc[0, "image_path"] = "corrupt.jpg"
    subset.loc[1, "image_path"] = "does-not-exist.jpg"
    subset.loc[2, ["title", "genres", "image_path"]] = ["", "", "does-not-exist.jpg"]  # nothing left: rejected
    subset.to_csv(folder / "posters.csv", index=False)
    config = EmbedConfig(images_root=root, text_columns=COLUMNS, chunk_size=5, show_progress=False)
    expected = embed_catalog(folder / "posters.csv", folder / "images-local", config, text_encoder=text_encoder,
                             image_encoder=image_encoder)
    got = embed_catalog_ray(folder / "posters.csv", folder / "images-ray", config, RayConfig(workers=1, batch_size=8))
    assert got.to_dict() == expected.to_dict()
    assert len(expected.warnings) == 2 and len(expected.rejected) == 1
    local_store, ray_store = Store(folder / "images-local"), Store(folder / "images-ray")
    assert_same_features(local_store, ray_store, "image")
    assert_same_features(local_store, ray_store, "text")


def test_a_bad_catalogue_fails_with_the_single_process_error_before_any_write(catalog, tmp_path):
    from mmrec.distributed import embed_catalog_ray

    _, items = catalog
    bad = pd.concat([items.iloc[:5], items.iloc[[2]]])
    bad.to_csv(tmp_path / "dup.csv", index=False)
    errors = []
    for run in (lambda: embed_catalog(tmp_path / "dup.csv", tmp_path / "a", TEXT_ONLY),
                lambda: embed_catalog_ray(tmp_path / "dup.csv", tmp_path / "b", TEXT_ONLY)):
        with pytest.raises(ValueError) as error:
            run()
        errors.append(str(error.value))
    assert errors[0] == errors[1] and "appears more than once (data rows [3, 6])" in errors[0]
    assert not (tmp_path / "b").exists()


def test_engine_options_without_engine_ray_are_a_usage_error(catalog, tmp_path, capsys):
    folder, _ = catalog
    code = main(["embed", str(folder / "items.csv"), "--store", str(tmp_path / "s"), "--no-images",
                 "--ray-workers", "2"])
    assert code == EXIT_USAGE
    assert "--ray-workers need --engine ray" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_without_ray_engine_ray_exits_1_saying_how_to_install_it(catalog, tmp_path):
    folder, _ = catalog
    done = run_without_ray(textwrap.dedent(f"""
        from mmrec.cli import main
        sys.exit(main(["embed", {str(folder / "items.csv")!r}, "--store", {str(tmp_path / "s")!r}, "--no-images",
                       "--engine", "ray", "--json"]))
    """), cwd=REPO)
    assert done.returncode == EXIT_FAILED, done.stderr
    assert "pip install 'mmrec[distributed]'" in done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["exit"] == EXIT_FAILED
    assert not (tmp_path / "s").exists()
    # the default engine needs no Ray
    local = run_without_ray("import mmrec; print(mmrec.embed_catalog.__name__)", cwd=REPO)
    assert local.returncode == 0 and local.stdout.strip() == "embed_catalog"
