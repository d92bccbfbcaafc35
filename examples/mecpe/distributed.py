"""Data-parallel training: the process group of a ``torchrun`` launch and the few collectives
the trainer needs.

``torchrun --nproc-per-node N -m examples.mecpe.train ...`` starts ``N`` processes with
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` in their environment; :func:`from_environment` reads
them (one process otherwise) and :func:`process_group` initialises ``torch.distributed``
(``gloo`` on the CPU, ``nccl`` on CUDA, each process on ``cuda:LOCAL_RANK``) unless the caller
already did, and tears down only what it set up. The collectives work on picklable objects
(``broadcast`` from rank 0, ``all_gather``) and are no-ops in one process.

Example::

    >>> ranks = Ranks()                      # one process
    >>> ranks.main, ranks.parallel, broadcast({"f1": 0.5}, ranks)
    (True, False, {'f1': 0.5})
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ["Ranks", "all_gather", "barrier", "broadcast", "from_environment", "process_group"]

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run.

    Attributes:
        rank: global rank (0: the process that logs, evaluates and writes files).
        world: number of processes.
        local_rank: rank on this machine (its CUDA device).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        """Whether more than one process trains."""
        return self.world > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def from_environment() -> Ranks:
    """The ranks of an initialised process group, else of ``torchrun``'s environment, else one
    process."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(
            dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", dist.get_rank())
        )
    world = _env_int("WORLD_SIZE", 1)
    ranks = Ranks(_env_int("RANK", 0), world, _env_int("LOCAL_RANK", 0))
    if world < 1 or not 0 <= ranks.rank < world:
        raise ValueError(f"RANK={ranks.rank} / WORLD_SIZE={world}: not a valid rank")
    return ranks


@contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[None]:
    """Initialise ``torch.distributed`` for ``ranks`` (if parallel and not yet initialised)."""
    if not ranks.parallel or dist.is_initialized():
        yield
        return
    if not dist.is_available():
        raise RuntimeError("data-parallel training needs torch.distributed, which this build lacks")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def broadcast(obj: T, ranks: Ranks) -> T:
    """Rank 0's ``obj`` on every rank (the others' argument is ignored)."""
    if not ranks.parallel:
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[no-any-return]


def all_gather(obj: T, ranks: Ranks) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ranks.parallel:
        return [obj]
    out: list[Any] = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def barrier(ranks: Ranks) -> None:
    """Wait until every rank is here."""
    if ranks.parallel:
        dist.barrier()
