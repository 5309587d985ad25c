"""The collective operations training uses, each with its gradient, on every device.

One table (the device policy's `native_collectives`, emu3_vq.device) says what the device's
backend runs; everything else is built from what it has, exactly (the same sums, the same numbers):

- ReduceScatter(x) = this rank's slice of AllReduce(x);
- AlltoAll(x)      = this rank's chunk of every rank's x, from AllGather(x);
- a collective over a sub-group = the world's AllGather, keeping the members' rows (and
  summing them, for AllReduce).

MindSpore 2.10 on CPU (msrun) runs AllReduce and AllGather between processes, over the world
group only ("AllGather only support mccl_world_group on CPU", though `create_group` itself
succeeds), and has no AlltoAll or ReduceScatter ("Unsupported op ... on CPU"). So the CPU
tests run the very code of GPU/Ascend except for those table entries. Each Cell carries its
own `bprop`, written with the same table: MindSpore's built-in gradient of AllGather is a
ReduceScatter, which would fail on CPU.

A `Group` of size 1 makes every operation the identity, without touching the communication
library: a single process runs the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
from emu3_vq import device
from mindspore import Tensor, nn, ops
from mindspore.ops import ReduceOp

# What a backend may run natively; which ones it does is the device policy's
# `native_collectives` (emu3_vq.device), the rest uses the fallbacks above.
_ALL = frozenset({"all_reduce", "all_gather", "reduce_scatter", "all_to_all", "sub_groups"})


def native(op: str, target: str | None = None) -> bool:
    """Whether `op` runs as the backend's own collective on `target` (None: the current device);
    "sub_groups": whether collectives run over groups smaller than the world.

    The one place that decides native vs fallback; the device target is read from the
    project's device policy (`emu3_vq.device.policy()`).
    """
    if op not in _ALL:
        raise ValueError(f"unknown collective {op!r}; known: {sorted(_ALL)}")
    return op in device.policy(target).native_collectives


@dataclass(frozen=True)
class Group:
    """A communication group: its name (as mindspore.communication knows it), size, this
    process's rank inside it, the world ranks of its members and the world group's name and
    size (to build sub-group collectives from the world's where the backend has none).
    Size 1: no communication at all."""

    name: str
    size: int
    rank: int
    members: tuple[int, ...] = (0,)
    world: str = ""
    world_size: int = 1

    def __post_init__(self):
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"group {self.name!r}: need size >= 1 and 0 <= rank < size, got "
                             f"size {self.size}, rank {self.rank}")
        if len(self.members) != self.size:
            raise ValueError(f"group {self.name!r}: {len(self.members)} members for size {self.size}")


def single() -> Group:
    """The group of one process (every collective is the identity)."""
    return Group("single", 1, 0)


class _Raw(nn.Cell):
    """The primitives of one group and the fallbacks built from them; no gradients here.

    Tensors are gathered and scattered along axis 0 (whose length, for a scatter, must divide
    by the group size); all-to-all takes any two axes.
    """

    def __init__(self, group: Group, target: str | None = None):
        super().__init__()
        self.size, self.rank = group.size, group.rank
        self.native_scatter = native("reduce_scatter", target)
        self.via_world = 1 < group.size < group.world_size and not native("sub_groups", target)
        if self.via_world:  # the world's AllGather, keeping the members' rows
            self.world_size = group.world_size
            self.world_gather_op = ops.AllGather(group.world)
            self.members = Tensor(list(group.members), ms.int32)
            self.native_scatter = False
        elif self.size > 1:
            self.all_reduce_op = ops.AllReduce(ReduceOp.SUM, group.name)
            self.all_gather_op = ops.AllGather(group.name)
            if self.native_scatter:
                self.reduce_scatter_op = ops.ReduceScatter(ReduceOp.SUM, group.name)

    def _members_rows(self, x):
        """x [n, ...] on each rank -> [size, n, ...]: the members' x, in group-rank order."""
        everyone = self.world_gather_op(x).reshape((self.world_size,) + x.shape)
        return ops.gather(everyone, self.members, 0)

    def all_reduce(self, x):
        if self.size == 1:
            return x
        if self.via_world:
            return self._members_rows(x).sum(0)
        return self.all_reduce_op(x)

    def all_gather(self, x):
        """[n, ...] on each rank -> [size*n, ...], rank r's rows at r*n."""
        if self.size == 1:
            return x
        if self.via_world:
            return self._members_rows(x).reshape((self.size * x.shape[0],) + x.shape[1:])
        return self.all_gather_op(x)

    def reduce_scatter(self, x):
        """[size*n, ...] on each rank -> rows [rank*n, (rank+1)*n) of the sum over ranks."""
        if self.size == 1:
            return x
        if self.native_scatter:
            return self.reduce_scatter_op(x)
        n = x.shape[0] // self.size
        return self.all_reduce(x)[self.rank * n:(self.rank + 1) * n]

    def all_to_all(self, x, split_axis: int, concat_axis: int):
        """The fallback all-to-all: split x along split_axis into `size` chunks, chunk r for rank
        r; concatenate what arrives along concat_axis in source-rank order."""
        if self.size == 1:
            return x
        p = self.size
        c = x.shape[split_axis] // p
        everyone = self.all_gather(x.expand_dims(0))  # [p, *x.shape]
        begin = [0] * (x.ndim + 1)
        begin[split_axis + 1] = self.rank * c
        size = [p] + list(x.shape)
        size[split_axis + 1] = c
        mine = ops.slice(everyone, tuple(begin), tuple(size))  # [p, ..., c, ...]
        return ops.concat([mine[s] for s in range(p)], concat_axis)


class AllReduce(nn.Cell):
    """Sum over the group. Gradient: the sum of the upstream gradients over the group (every
    rank's loss depends on the result)."""

    def __init__(self, group: Group, target: str | None = None):
        super().__init__()
        self.raw = _Raw(group, target)

    def construct(self, x):
        return self.raw.all_reduce(x)

    def bprop(self, x, out, dout):
        return (self.raw.all_reduce(dout),)


class AllGather(nn.Cell):
    """[n, ...] -> [size*n, ...] concatenated in rank order. Gradient: ReduceScatter (the sum
    over ranks of the gradient, each rank keeping its own rows)."""

    def __init__(self, group: Group, target: str | None = None):
        super().__init__()
        self.raw = _Raw(group, target)

    def construct(self, x):
        return self.raw.all_gather(x)

    def bprop(self, x, out, dout):
        return (self.raw.reduce_scatter(dout),)


class ReduceScatter(nn.Cell):
    """[size*n, ...] -> this rank's n rows of the sum over ranks. Gradient: AllGather."""

    def __init__(self, group: Group, target: str | None = None):
        super().__init__()
        self.raw = _Raw(group, target)

    def construct(self, x):
        return self.raw.reduce_scatter(x)

    def bprop(self, x, out, dout):
        return (self.raw.all_gather(dout),)


class AlltoAll(nn.Cell):
    """Chunk r of x along split_axis to rank r, concatenated along concat_axis in rank order.
    Gradient: the reverse exchange (split along concat_axis, concatenate along split_axis)."""

    def __init__(self, group: Group, split_axis: int, concat_axis: int, target: str | None = None):
        super().__init__()
        self.raw = _Raw(group, target)
        self.split_axis, self.concat_axis = split_axis, concat_axis
        self.native = group.size > 1 and native("all_to_all", target) and (
            group.size == group.world_size or native("sub_groups", target))
        if self.native:
            self.forward_op = ops.AlltoAll(group.size, split_axis, concat_axis, group.name)
            self.backward_op = ops.AlltoAll(group.size, concat_axis, split_axis, group.name)

    def construct(self, x):
        if self.native:
            return self.forward_op(x)
        return self.raw.all_to_all(x, self.split_axis, self.concat_axis)

    def bprop(self, x, out, dout):
        if self.native:
            return (self.backward_op(dout),)
        return (self.raw.all_to_all(dout, self.concat_axis, self.split_axis),)
