"""Training on several processes started by ``torchrun``: PyTorch's DistributedDataParallel (gloo on CPUs, NCCL on
CUDA GPUs), each process training on its share of every batch, rank 0 validating, deciding when to stop for all
and writing the model.

Why a share of every batch: the processes take every ``N``-th window of the epoch's shuffled order, the way
``DistributedSampler`` does, in batches of ``ceil(batch_size / N)``, so their ``k``-th batches together are the
``k``-th batch one process would take from the same order (``N * ceil(batch_size / N)`` windows, ``batch_size`` when
``N`` divides it). The effective batch, the steps per epoch and the learning rate stay those of a one-process run,
and so does the validation curve per epoch (measured in docs/training.md); ``N`` processes share the work of each
step. A window is a slice of one user's history and goes to one process per epoch.

Every process holds the whole training data and the same weights (DDP averages the gradients before each identical
optimiser step, so the weight average stays identical too); only rank 0 validates, and only it writes the store.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..data.batch import SequenceBatch
from ..encoders.precision import resolve_device
from ..networks.model import MultimodalRecommender

__all__ = ["Ranks", "check_in_sync", "is_main_process", "main_first", "mean_over_ranks", "process_batch_size",
           "process_group", "rank_zero_decides", "separate_random_streams", "share", "training_loss"]

_TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job: ``rank`` of ``world_size`` processes, training on ``device``."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Whether this process validates, writes the store and reports (rank 0)."""
        return self.rank == 0


def is_main_process() -> bool:
    """False only in a process of a torchrun job other than rank 0, the one that writes and reports."""
    return int(os.environ.get("RANK") or 0) == 0


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE") or 1)


def _rank_device(device: str, local_rank: int, local_world_size: int) -> torch.device:
    """The device of the process with ``local_rank`` on its machine: the CPU, or the GPU of its local rank."""
    wanted = resolve_device(device)
    if wanted.type == "cpu":
        return wanted
    if wanted.type != "cuda":
        raise ValueError(f"device={device!r}: torchrun training runs on CPUs (gloo) or CUDA GPUs (NCCL), "
                         f"not on {wanted.type}")
    if wanted.index is not None:
        raise ValueError(f"device={device!r}: under torchrun each process trains on the GPU of its local rank "
                         "(cuda:0, cuda:1, ...); pass device 'cuda' or 'auto'")
    count = torch.cuda.device_count()
    if count < local_world_size:
        fewer = f"start at most {count} (--nproc-per-node {count}) or " if count else ""
        raise ValueError(f"device={device!r}: torchrun started {local_world_size} processes on this machine but it "
                         f"has {count} CUDA device(s), and each process needs its own: {fewer}train on the CPUs "
                         "(--device cpu)")
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def process_group(device: str) -> Iterator[Ranks | None]:
    """Under torchrun (``WORLD_SIZE`` > 1 in the environment): join the job's process group, NCCL when ``device``
    resolves to CUDA (each process on the GPU of its ``LOCAL_RANK``), gloo on the CPU, and yield this process's
    :class:`Ranks`; the group is left when the block ends, unless the caller had joined it before. Elsewhere yield
    ``None`` and do nothing: one process trains as it always has."""
    world_size = _world_size()
    if world_size == 1:
        yield None
        return
    missing = [name for name in _TORCHRUN_ENV if not os.environ.get(name)]
    if missing:
        raise ValueError(f"WORLD_SIZE={world_size} is set but {', '.join(missing)} are not: start distributed "
                         "training with `torchrun --nproc-per-node N -m mmrec train ...`")
    local_rank = int(os.environ["LOCAL_RANK"])
    rank_device = _rank_device(device, local_rank, int(os.environ.get("LOCAL_WORLD_SIZE") or world_size))
    joined = not dist.is_initialized()
    if joined:
        if rank_device.type == "cuda":
            torch.cuda.set_device(rank_device)
            dist.init_process_group("nccl", device_id=rank_device)
        else:
            dist.init_process_group("gloo")
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size(), rank_device)
    finally:
        if joined:
            dist.destroy_process_group()


@contextlib.contextmanager
def main_first(ranks: Ranks | None) -> Iterator[None]:
    """Rank 0 runs the block first and the other processes after it: what rank 0 writes into the store there (the
    event-text cache) they then only read. Without ``ranks``: just the block."""
    if ranks is not None and not ranks.main:
        dist.barrier()
    yield
    if ranks is not None and ranks.main:
        dist.barrier()


def share(order: np.ndarray, batch_size: int, ranks: Ranks | None) -> tuple[np.ndarray, int]:
    """This process's windows of an epoch's shuffled ``order`` and its batch size: every ``world_size``-th window
    from its rank, in batches of ``ceil(batch_size / world_size)`` (see the module's docstring). ``order`` is first
    padded with its own first windows to a multiple of ``world_size``, as ``DistributedSampler`` pads, so every
    process takes as many steps. Without ``ranks``: ``order`` and ``batch_size``."""
    if ranks is None:
        return order, batch_size
    n = ranks.world_size
    padded = np.resize(order, len(order) + (-len(order)) % n)
    return padded[ranks.rank :: n], process_batch_size(batch_size, ranks)


def process_batch_size(batch_size: int, ranks: Ranks | None) -> int:
    """Windows per step of each process: ``ceil(batch_size / world_size)`` (``batch_size`` without ``ranks``)."""
    return batch_size if ranks is None else -(-batch_size // ranks.world_size)


class _Loss(torch.nn.Module):
    """The model's training loss as a module's ``forward``: DistributedDataParallel arms its gradient hooks in
    ``forward``, so the loss must be computed through one."""

    def __init__(self, model: MultimodalRecommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        return self.model.loss(batch)


def training_loss(model: MultimodalRecommender, ranks: Ranks | None) -> Callable[[SequenceBatch], torch.Tensor]:
    """``model.loss``, through DistributedDataParallel under ``ranks``: its backward pass then averages the
    gradients over the processes."""
    if ranks is None:
        return model.loss
    # The fusion holds an adapter for text and one for images whatever the model reads: a model that does not read
    # both (--modalities text,id: the image adapter; id alone: both adapters and the Siamese tower) never gives
    # them a gradient, and unless DDP searches every step's graph for unused parameters it waits for theirs: the
    # step's gradients are left unaveraged (check_in_sync caught the processes drifting apart) and the next step
    # fails. A model reading both uses every parameter (a modality the store lacks is read as zeros): no search.
    c = model.config
    return DistributedDataParallel(_Loss(model), find_unused_parameters=not (c.use_text and c.use_image))


def separate_random_streams(seed: int, ranks: Ranks | None) -> None:
    """Give each process its own torch random stream, derived from ``seed`` and its rank, for dropout and the
    loss's sampled negatives: with the one stream every process draws the same negatives and masks for its share
    of the batch. Call it after the model is built: the initial weights come from the shared ``seed``."""
    if ranks is not None:
        torch.manual_seed(int(np.random.SeedSequence([seed, ranks.rank]).generate_state(1)[0]))


def mean_over_ranks(values: dict[str, float], ranks: Ranks | None) -> dict[str, float]:
    """``values`` (the same keys in every process) averaged over the processes; unchanged without ``ranks``."""
    if ranks is None:
        return values
    summed = torch.tensor(list(values.values()), dtype=torch.float64, device=ranks.device)
    dist.all_reduce(summed)
    return dict(zip(values, (summed / ranks.world_size).tolist()))


def rank_zero_decides(flag: bool, ranks: Ranks | None) -> bool:
    """Rank 0's ``flag`` in every process (``flag`` itself without ``ranks``): one decision, such as early
    stopping, taken once and followed by all."""
    if ranks is None:
        return flag
    decision = torch.tensor([int(flag)], device=ranks.device)
    dist.broadcast(decision, src=0)
    return bool(decision.item())


def check_in_sync(ranks: Ranks | None, *modules: torch.nn.Module) -> None:
    """Raise ``RuntimeError`` when ``modules``' weights differ between the processes (compared by their sum and sum
    of squares). DDP keeps them equal, the same averaged gradients feeding the same optimiser steps, and rank 0's
    validation and saved model speak for every process only while they are; a difference means some state changed
    outside those steps. Nothing without ``ranks``."""
    if ranks is None:
        return
    weights = [p.detach().double() for module in modules for p in module.parameters()]
    mine = torch.stack([sum(w.sum() for w in weights), sum((w * w).sum() for w in weights)]).to(ranks.device)
    everyone = [torch.empty_like(mine) for _ in range(ranks.world_size)]
    dist.all_gather(everyone, mine)
    apart = [rank for rank, theirs in enumerate(everyone) if not torch.allclose(theirs, everyone[0], rtol=1e-6)]
    if apart:
        raise RuntimeError(f"after training, the weights of process(es) {apart} differ from rank 0's "
                           f"({[t.tolist() for t in everyone]}): the processes no longer trained one model")
