"""A real local Ray cluster for the distributed tests: started once per test module, stopped after it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def ray_cluster():
    """``ray`` initialised on this machine with 2 CPUs, no dashboard and a small object store (skipped, saying how to
    install it, where Ray Data is not installed)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'mmrec[distributed]'")
    pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'mmrec[distributed]'")
    # a faster start, and nothing written or sent outside the test: no usage report, no auth token file
    for name, value in (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_AUTH_MODE", "disabled")):
        os.environ.setdefault(name, value)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def run_without_ray(code: str, cwd) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where ``import ray`` fails, as on an install without the extra."""
    return subprocess.run([sys.executable, "-c", "import sys; sys.modules['ray'] = None\n" + code], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
