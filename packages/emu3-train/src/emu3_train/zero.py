"""ZeRO stages 0-3 of our own, over a group of N ranks (the engine uses the whole world).

Every parameter is sharded the same way: flattened, zero-padded to a multiple of N, rank r
keeping elements [r*s, (r+1)*s) (s = ceil(numel / N)). Padding stays zero through AdamW
(zero gradient, zero moments, zero update).

- stage 0: nothing sharded. Gradients accumulate in full buffers and are AllReduced (summed)
  once per optimiser step.
- stage 1: optimiser moments sharded. Full accumulation buffers; at the step they are
  reduce-scattered, each rank runs AdamW on its shard (a shard copy of each parameter, in
  the parameter's dtype) and the new shards are AllGathered into the full parameters.
- stage 2: as 1, but every micro-batch's gradient is reduce-scattered at once: the
  accumulation buffers are shards.
- stage 3: as 2, and the parameters themselves are shards: `shard_parameters` replaces each
  parameter-owning cell of emu3-lm (Emu3Linear, Emu3Embedding, Emu3RMSNorm) with one that holds
  its shard under the same parameter name and AllGathers the full weight inside `construct`,
  just before use. The gathered weight is a temporary of the compiled graph: autodiff keeps it
  for the backward, unless the layer is recomputed (`layer.recompute()`: the gathers then run
  again in the backward; tests/test_parallel.py runs that on 2 processes). The gather's
  gradient is a ReduceScatter, so the gradients come out of the backward as summed shards,
  and AdamW updates the shards in place.

Gradients are summed over ranks, never averaged: the engine's loss is already divided by the
global token count, so the sum is the gradient of the global loss. They accumulate in float32
buffers whatever the parameters' dtype; the moments are float32 (optim.AdamW).

Bytes held per rank with N ranks, P the parameters' bytes and F their float32 size (F = P in
fp32, 2P in bf16/fp16): stage 0 P + F (gradients) + 2F (moments); stage 1 P + P/N (shard
copies) + F + 2F/N; stage 2 P + P/N + F/N + 2F/N; stage 3 (P + F + 2F)/N. Measured on 2 ranks
in fp32 (`TrainEngine.memory_report`, tests/test_parallel.py): 1.0, 0.875, 0.75 and 0.50 of
one process.

Why not mindone's ZeRO helper (mindone 0.5.0, read and partly run): under stages > 0 it
replaces the gradient reducer by the identity and, under stage 3, only shards the layers it
wraps (Dense/Conv/Linear by exact type), so the gradients of the embedding and of every norm
are never reduced across ranks; stages 1-2 shard only parameters whose first dimension
divides by N (not Emu3's vocabulary of 184622 rows over 4 or 8 ranks) and average the ranks'
gradients (a mean of per-rank means: the global token mean only when every rank holds as many
supervised tokens); it clips whatever gradients each rank holds (the shards, under stages 1-2)
by their local norm, with MindSpore's clip_by_global_norm (not torch's coefficient), skips the
overflow check on CPU, and its stages 2 and 3 call ReduceScatter, which MindSpore 2.10 lacks
on CPU (they failed at the first step there). It also pins transformers 4.57, which cannot
share a venv with our test oracle (transformers 5.23).
"""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from emu3_lm.model import Emu3Embedding, Emu3Linear, Emu3RMSNorm, embed, rms_norm
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from .collectives import AllGather, AllReduce, Group, ReduceScatter
from .optim import AdamW, param_groups

STAGES = (0, 1, 2, 3)


# ---- the flat layout --------------------------------------------------------------------------

def shard_size(numel: int, n: int) -> int:
    """Elements per rank of a parameter of `numel` elements over n ranks (padded)."""
    return max(1, math.ceil(numel / n))


def shard_array(array: np.ndarray, n: int, rank: int) -> np.ndarray:
    """Rank `rank`'s flat, zero-padded shard of a full array (host side)."""
    flat = np.asarray(array).reshape(-1)
    s = shard_size(flat.size, n)
    out = np.zeros(s, dtype=flat.dtype)
    part = flat[rank * s:(rank + 1) * s]
    out[:part.size] = part
    return out


class Flat(nn.Cell):
    """Graph-side layout of one parameter: full tensor <-> flat padded [n*s] <-> this rank's shard."""

    def __init__(self, shape: tuple[int, ...], group: Group):
        super().__init__()
        self.shape = tuple(shape)
        self.numel = int(np.prod(shape, dtype=np.int64))
        self.n, self.rank = group.size, group.rank
        self.s = shard_size(self.numel, self.n)
        self.pad = self.n * self.s - self.numel

    def padded(self, x):
        """Full tensor -> flat [n*s], zero-padded."""
        flat = x.reshape(-1)
        if self.pad:
            flat = ops.concat((flat, ops.zeros((self.pad,), flat.dtype)))
        return flat

    def local(self, x):
        """Full tensor -> this rank's shard [s] (no communication)."""
        return self.padded(x)[self.rank * self.s:(self.rank + 1) * self.s]

    def unpadded(self, flat):
        """Flat [n*s] -> full tensor."""
        return flat[:self.numel].reshape(self.shape)


# ---- stage 3: cells holding a shard ---------------------------------------------------------

class _Sharded(nn.Cell):
    """Holds `weight`, a flat shard Parameter named like the full one, and gathers the full weight."""

    def _setup(self, name: str, full: Parameter, group: Group):
        self.flat = Flat(tuple(full.shape), group)
        self.full_shape = tuple(full.shape)
        self.weight = Parameter(Tensor(shard_array(full.asnumpy(), group.size, group.rank)), name=name,
                                requires_grad=full.requires_grad)
        self.gather = AllGather(group)

    def full_weight(self):
        """The whole weight, AllGathered now (its gradient is reduce-scattered into the shard)."""
        return self.flat.unpadded(self.gather(self.weight))


class ShardedLinear(_Sharded):
    """Emu3Linear (y = x W^T) over a gathered weight."""

    def __init__(self, name: str, cell: Emu3Linear, group: Group):
        super().__init__()
        self._setup(name, cell.weight, group)
        self.out_features = cell.out_features
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        shape = x.shape
        y = self.matmul(x.reshape(-1, shape[-1]), self.full_weight())
        return y.reshape(shape[:-1] + (self.out_features,))


class ShardedEmbedding(_Sharded):
    """Emu3Embedding over a gathered table."""

    def __init__(self, name: str, cell: Emu3Embedding, group: Group):
        super().__init__()
        self._setup(name, cell.weight, group)
        self.pad_id = cell.pad_id

    def construct(self, ids):
        return embed(self.full_weight(), ids, self.pad_id)


class ShardedRMSNorm(_Sharded):
    """Emu3RMSNorm (fp32 statistics, cast back, then scaled) over a gathered weight."""

    def __init__(self, name: str, cell: Emu3RMSNorm, group: Group):
        super().__init__()
        self._setup(name, cell.weight, group)
        self.eps = cell.eps

    def construct(self, x):
        return rms_norm(x, self.full_weight(), self.eps)


_SHARDED = {Emu3Linear: ShardedLinear, Emu3Embedding: ShardedEmbedding, Emu3RMSNorm: ShardedRMSNorm}


def shard_parameters(model: nn.Cell, group: Group) -> None:
    """Stage 3: replace every parameter-owning cell of `model` (an emu3-lm model) in place by its
    sharded twin; each rank keeps 1/N of every weight. Every rank must hold the same weights
    before. Raises if a parameter lives in a cell of another kind."""
    owners = [(name, cell) for name, cell in model.cells_and_names() if type(cell) in _SHARDED]
    for name, cell in owners:
        parent_name, _, attr = name.rpartition(".")
        parent = model
        for part in parent_name.split(".") if parent_name else ():
            parent = parent._cells[part]
        param_name = cell.weight.name
        sharded = _SHARDED[type(cell)](param_name, cell, group)
        setattr(parent, attr, sharded)
        sharded.weight.name = param_name  # setattr prefixes it relative to the parent
    sharded = {id(c.weight) for c in sharded_cells(model).values()}
    other = [p.name for p in model.get_parameters() if id(p) not in sharded]
    if other:
        raise ValueError(f"ZeRO-3 shards only Emu3Linear/Emu3Embedding/Emu3RMSNorm weights; "
                         f"not sharded: {other[:5]}")


def head_weight(model):
    """The lm_head weight of an Emu3ForCausalLM, gathered under stage 3 (graph-safe)."""
    head = model.lm_head
    if isinstance(head, _Sharded):
        return head.full_weight()
    return head.weight


def sharded_cells(model) -> dict[str, _Sharded]:
    """Parameter name -> its sharded cell (stage 3)."""
    return {c.weight.name: c for _, c in model.cells_and_names() if isinstance(c, _Sharded)}


# ---- the optimiser side --------------------------------------------------------------------------

class ZeroOptimizer(nn.Cell):
    """AdamW over `model`'s trainable parameters with ZeRO stage `stage` over `group`, and the
    gradient accumulation buffers. Graph-safe methods, called inside the engine's compiled steps:

        accumulate(grads)             after each micro-batch's backward (grads in params order)
        reduce(inv_scale) -> (grads, sq, bad)   once per step: the summed, unscaled gradients
                                      (full or this rank's shards), the squared 2-norm of each
                                      parameter's whole gradient (over all shards) and the count
                                      of non-finite elements (over all ranks); buffers zeroed
        apply(grads, lr, coef)        AdamW on grads * coef
        publish()                     stages 1, 2 (a graph of its own): AllGather the params

    Under stage 3 the model must have been sharded first (`shard_parameters`).
    """

    def __init__(self, model: nn.Cell, stage: int, group: Group, weight_decay: float,
                 betas: tuple[float, float], eps: float):
        super().__init__(auto_prefix=False)
        if stage not in STAGES:
            raise ValueError(f"zero_stage must be one of {STAGES}, got {stage}")
        self.stage = stage
        self.n, self.rank = group.size, group.rank
        groups = param_groups(model, weight_decay)
        params = [p for g in groups for p in g["params"]]
        if not params:
            raise ValueError("the model has no trainable parameters")
        object.__setattr__(self, "model_params", tuple(params))  # outside the Cell tree: names kept
        self.names = tuple(p.name for p in params)
        if stage == 3:
            cells = sharded_cells(model)
            missing = [n for n in self.names if n not in cells]
            if missing:
                raise ValueError(f"stage 3 needs a sharded model (shard_parameters); not sharded: {missing[:5]}")
            self.full_shapes = tuple(cells[n].full_shape for n in self.names)
        else:
            self.full_shapes = tuple(tuple(p.shape) for p in params)
        self.flats = nn.CellList([Flat(shape, group) for shape in self.full_shapes])
        self.all_reduce = AllReduce(group)
        self.all_gather = AllGather(group)
        self.reduce_scatter = ReduceScatter(group)
        if stage in (1, 2):  # AdamW updates shard copies, gathered into the parameters after
            self.shards = ParameterTuple([
                Parameter(Tensor(shard_array(p.asnumpy(), self.n, self.rank)), name=f"zero.{p.name}",
                          requires_grad=False) for p in params])
            by_id = {id(p): s for p, s in zip(params, self.shards)}
            groups = [{"params": [by_id[id(p)] for p in g["params"]], "weight_decay": g["weight_decay"]}
                      for g in groups]
        self.optimizer = AdamW(groups, betas=betas, eps=eps)
        shard_grads = stage >= 2
        self.grad_buffers = ParameterTuple([
            Parameter(ops.zeros((f.s,) if shard_grads else f.shape, ms.float32), name=f"grad.{name}",
                      requires_grad=False) for f, name in zip(self.flats, self.names)])

    # ---- compiled-graph pieces --------------------------------------------------------------
    def accumulate(self, grads):
        """Add one micro-batch's gradients to the buffers (stage 2: reduce-scattered first)."""
        for i in range(len(self.grad_buffers)):
            g = grads[i].astype(ms.float32)
            if self.stage == 2:
                g = self.reduce_scatter(self.flats[i].padded(g))
            ops.assign_add(self.grad_buffers[i], g)
        return True

    def reduce(self, inv_scale):
        """The step's summed gradients times inv_scale, per-parameter squared norms, non-finite
        count (both over the whole group); zeroes the buffers."""
        grads, sqs, bads = (), (), ()
        for i in range(len(self.grad_buffers)):
            g = self.grad_buffers[i] * inv_scale
            if self.stage == 0:
                g = self.all_reduce(g)
            elif self.stage == 1:
                g = self.reduce_scatter(self.flats[i].padded(g))
            grads = grads + (g,)
            sqs = sqs + (ops.sum(ops.square(g)),)
            bads = bads + (ops.logical_not(ops.isfinite(g)).astype(ms.float32).sum(),)
        stats = ops.concat((ops.stack(sqs), ops.stack(bads).sum().reshape(1)))
        if self.stage > 0:
            stats = self.all_reduce(stats)  # shards: sum the parts of every norm and count
        for buf in self.grad_buffers:
            ops.assign(buf, ops.zeros_like(buf))
        return grads, stats[:-1], stats[-1]

    def apply(self, grads, lr, coef):
        """AdamW on grads * coef (the shards under stages 1-3)."""
        clipped = ()
        for g in grads:
            clipped = clipped + (g * coef,)
        return self.optimizer(clipped, lr)

    def publish(self):
        """Stages 1 and 2: AllGather the updated shards into the full parameters. A graph of its
        own: inside `apply`'s graph MindSpore 2.10 read the shards before AdamW's assignments
        (the parameters lagged one step behind, ops.depend did not help)."""
        for i in range(len(self.shards)):
            full = self.flats[i].unpadded(self.all_gather(self.shards[i]))
            ops.assign(self.model_params[i], full.astype(self.model_params[i].dtype))
        return True

    # ---- host side --------------------------------------------------------------------------
    def moments(self):
        """(name, exp_avg, exp_avg_sq) Parameters: full under stage 0, shards otherwise."""
        return zip(self.names, self.optimizer.exp_avg, self.optimizer.exp_avg_sq)

    def bytes(self) -> dict[str, int]:
        """Bytes held by this rank: shard copies (stages 1, 2), gradient buffers, optimiser state."""
        def size(params):
            return int(sum(p.size * p.itemsize for p in params))

        return {
            "shard_copies": size(self.shards) if self.stage in (1, 2) else 0,
            "gradients": size(self.grad_buffers),
            "optimizer": size(self.optimizer.exp_avg) + size(self.optimizer.exp_avg_sq)
            + self.optimizer.steps.itemsize,
        }
