"""Joining (or starting) the Ray cluster the distributed jobs run on, and sizing their actor pools.

Ray is optional (``pip install 'mmrec[distributed]'``): it is imported here, lazily, and nowhere else but the job
modules' functions, so ``import mmrec`` and the default ``--engine local`` never need it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Iterator

__all__ = ["INSTALL_HINT", "PoolSize", "RayConfig", "RayNotInstalledError", "commit_in_order", "pool_size",
           "ray_session", "require_ray"]

INSTALL_HINT = "pip install 'mmrec[distributed]'"


class RayNotInstalledError(RuntimeError):
    """``--engine ray`` (or a ``*_ray`` function) without Ray Data installed."""


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide a distributed job runs.

    Attributes:
        address: ``None`` starts a Ray instance on this machine for the job (and stops it after); ``"auto"`` joins
            the running cluster (``ray start --head`` on this machine, or ``RAY_ADDRESS``); ``"HOST:PORT"`` joins
            that one. A session already initialised in this process (``ray.init`` before the call) is used as is.
        workers: actors in the pool, each loading its model once (``None``: one per GPU when the cluster has GPUs,
            else one per two CPUs).
        cpus_per_worker: CPUs each actor reserves, and its torch threads (``None``: the cluster's CPUs shared out).
        gpus_per_worker: GPUs each embedding actor reserves (``None``: one, or a share when there are fewer GPUs than
            workers, when the cluster has GPUs and the encoders' device is not ``cpu``; ``0``: none). Refresh folds
            on CPUs, as the single-process refresh does.
        batch_size: rows per actor call: catalogue items for embed (each encoder splits them into its own batch
            size, text 64, image 32), users for refresh.
        num_cpus: CPUs a Ray instance started for the job may use (``None``: all); ignored when joining a cluster.
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None
    batch_size: int = 128
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        for name in ("cpus_per_worker", "gpus_per_worker"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus must be >= 1, got {self.num_cpus}")


def require_ray():
    """The ``ray`` module with Ray Data, or :class:`RayNotInstalledError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the extra is ray[data]: core Ray alone lacks it)
    except ImportError as error:
        raise RayNotInstalledError(f"the Ray engine needs Ray Data, which is not installed ({error}): "
                                   f"{INSTALL_HINT}") from None
    return ray


@contextlib.contextmanager
def ray_session(config: RayConfig) -> Iterator[object]:
    """The ``ray`` module, initialised for ``config`` for the duration of the block (shut down after only when this
    call started it). Ray Data's own progress output is kept off stdout, where ``--json`` prints its line."""
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        options = {"num_cpus": config.num_cpus} if config.address is None else {"address": config.address}
        ray.init(**options, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # its one message says that the bars just switched off are off
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class PoolSize:
    """An actor pool: ``workers`` actors, each reserving ``cpus`` CPUs (its torch threads: ``threads``) and
    ``gpus`` GPUs."""

    workers: int
    cpus: float
    gpus: float
    threads: int

    def split(self, rows: int, batch_size: int) -> tuple[int, int]:
        """``(blocks, rows per actor call)`` for ``rows`` work rows: calls of ``batch_size`` rows, fewer rows when
        that would leave some actor idle (a small job still uses the whole pool)."""
        batch = max(1, min(batch_size, -(-rows // self.workers)))
        return max(1, -(-rows // batch)), batch


def pool_size(ray, config: RayConfig, use_gpus: bool) -> PoolSize:
    """Size the pool from ``config`` and the cluster's resources (``use_gpus``: the job can run on GPUs)."""
    resources = ray.cluster_resources()
    total_cpus, total_gpus = float(resources.get("CPU", 1)), float(resources.get("GPU", 0))
    gpus_available = use_gpus and total_gpus > 0 and config.gpus_per_worker != 0
    workers = config.workers or (int(total_gpus) if gpus_available and total_gpus >= 1
                                 else max(1, int(total_cpus) // 2))
    cpus = config.cpus_per_worker if config.cpus_per_worker is not None else max(1.0, total_cpus // workers)
    gpus = 0.0
    if gpus_available:
        gpus = config.gpus_per_worker if config.gpus_per_worker is not None else min(1.0, total_gpus / workers)
    return PoolSize(workers, cpus, gpus, max(1, int(cpus)))


def commit_in_order(answers: Iterable[dict], expected: list[int], file: Callable[[dict], Iterable[int]],
                    commit: Callable[[int], None], job: str) -> None:
    """Drive the driver's one writer: ``file`` takes each answered batch of the actors (``dict`` of ``(B, ...)``
    columns) and returns the part each of its rows belongs to; part ``i`` is committed once its ``expected[i]``
    rows are in and every part before it is committed. Actors finish out of order, the store and the report
    advance in input order, and a part with no work commits as soon as its turn comes. A failed Ray job is a
    ``RuntimeError`` naming ``job`` and the worker's error."""
    from ray.exceptions import RayError

    missing, done = list(expected), 0
    try:
        for answer in answers:
            for part in file(answer):
                missing[part] -= 1
            while done < len(missing) and missing[done] == 0:
                commit(done)
                done += 1
        while done < len(missing) and missing[done] == 0:
            commit(done)
            done += 1
    except RayError as error:  # the last line names the worker's exception; the rest is Ray's traceback
        raise RuntimeError(f"the Ray {job} job failed: {str(error).strip().splitlines()[-1]}") from error
    if done < len(missing):
        raise RuntimeError(f"the Ray {job} job answered {sum(expected) - sum(missing)} of {sum(expected)} rows")
