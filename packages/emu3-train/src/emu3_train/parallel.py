"""The process world of a training run: who this process is, and its communication groups.

Launched by msrun (`emu3_train.launch`), each worker calls `init()` once, early: msrun also
runs the script in its scheduler process, which serves the cluster inside
`mindspore.communication.init()` and never returns from it, so nothing costly should come
before. Not launched by msrun: one process, no communication library at all.

Ranks are laid out as `rank = dp_rank * sp + sp_rank`: the `sp` ranks of one sequence-parallel
group are consecutive (on one machine, where the all-to-alls are cheapest) and share the
data-parallel rank (the same rows of the batch). A group that is the whole world is the world
group; others are made with `mindspore.communication.create_group` when first asked for. On
CPU, MindSpore 2.10 creates sub-groups but runs collectives over the world group only:
emu3_train.collectives then builds them from the world's AllGather (tests/test_parallel.py runs
2 x 2 ranks that way).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

from .collectives import Group, single

_initialized = False


def launched_by_msrun() -> bool:
    """Whether msrun started this process (it sets MS_ROLE and MS_WORKER_NUM for its workers)."""
    return os.environ.get("MS_ROLE") in ("MS_WORKER", "MS_SCHED") and "MS_WORKER_NUM" in os.environ


def init() -> tuple[int, int]:
    """Join the world (once; later calls just answer): (rank, world size); (0, 1) when not
    launched by msrun."""
    global _initialized
    if not launched_by_msrun():
        return 0, 1
    from mindspore import communication

    if not _initialized:
        communication.init()
        _initialized = True
    return communication.get_rank(), communication.get_group_size()


@dataclass(frozen=True)
class ParallelConfig:
    """This process's place in the world: `world_size` processes, `sequence_parallel` (sp) of
    them splitting each sequence, `world_size // sp` data-parallel groups of rows."""

    world_size: int = 1
    rank: int = 0
    sequence_parallel: int = 1

    def __post_init__(self):
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got {self.world_size}, {self.rank}")
        if self.sequence_parallel < 1 or self.world_size % self.sequence_parallel:
            raise ValueError(f"sequence_parallel {self.sequence_parallel} must be >= 1 and divide the world size "
                             f"{self.world_size}")

    @classmethod
    def detect(cls, sequence_parallel: int = 1) -> ParallelConfig:
        """The world msrun launched (joining it with `init()`), or one process."""
        rank, size = init()
        return cls(world_size=size, rank=rank, sequence_parallel=sequence_parallel)

    @property
    def sp_size(self) -> int:
        return self.sequence_parallel

    @property
    def dp_size(self) -> int:
        return self.world_size // self.sequence_parallel

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sequence_parallel

    @property
    def dp_rank(self) -> int:
        return self.rank // self.sequence_parallel

    def sp_ranks(self) -> tuple[int, ...]:
        """World ranks of this process's sequence-parallel group (same rows, slices of the sequence)."""
        first = self.dp_rank * self.sp_size
        return tuple(range(first, first + self.sp_size))

    def dp_ranks(self) -> tuple[int, ...]:
        """World ranks holding the same slice of the sequence of different rows."""
        return tuple(range(self.sp_rank, self.world_size, self.sp_size))

    def world_group(self) -> Group:
        return _group(self.world_size, self.rank, tuple(range(self.world_size)))

    def sp_group(self) -> Group:
        return _group(self.world_size, self.rank, self.sp_ranks())

    def dp_group(self) -> Group:
        return _group(self.world_size, self.rank, self.dp_ranks())


@cache
def _group(world_size: int, rank: int, ranks: tuple[int, ...]) -> Group:
    """The group of `ranks` (containing `rank`): size 1 needs none, the whole world is the world
    group, others are created once."""
    if len(ranks) == 1:
        return single()
    from mindspore.communication import GlobalComm, create_group

    world = GlobalComm.WORLD_COMM_GROUP
    if len(ranks) == world_size:
        return Group(world, world_size, rank, ranks, world, world_size)
    name = "emu3_" + "_".join(str(r) for r in ranks)
    create_group(name, list(ranks))
    return Group(name, len(ranks), ranks.index(rank), ranks, world, world_size)
