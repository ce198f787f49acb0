"""A non-editable install carries every module and the demo's bundled data: ``pip install .`` then ``mmrec demo``
must find ``items.csv`` without the source checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the installed package maps these top-level folders into the mmrec namespace (pyproject's package-dir)
ROOTS = {"mmrec": REPO / "mmrec", "mmrec/encoders": REPO / "encoders", "mmrec/fusion": REPO / "fusion"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                    "-w", str(out)], check=True, capture_output=True)
    return next(out.glob("mmrec-*.whl"))


def test_the_wheel_holds_every_module_and_the_bundled_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"{prefix}/{path.relative_to(root).as_posix()}" for prefix, root in ROOTS.items()
                for path in root.rglob("*.py")}
    assert expected - names == set()
    for name in ("items.csv", "interactions.csv", "tags.csv"):
        assert f"mmrec/assets/ml-latest-small/{name}" in names


def test_the_demo_finds_its_data_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    found = subprocess.run(
        [sys.executable, "-c", "import mmrec.demo as d; print(d.__file__); print(d.bundled_data())"],
        env={**os.environ, "PYTHONPATH": str(target)}, cwd=tmp_path, check=True, capture_output=True, text=True,
    ).stdout.split()
    module, data = Path(found[0]), Path(found[1])
    assert module.is_relative_to(target) and data.is_relative_to(target)
    assert (data / "items.csv").stat().st_size == (REPO / "assets" / "ml-latest-small" / "items.csv").stat().st_size
