"""The optimiser side of fine-tuning: AdamW, its parameter groups, the lr schedule, clipping.

Each is written to give torch's / transformers' numbers (tests/test_optim.py compares them on
the CPU) and, where it runs per step, to be traceable inside one `ms.jit`-compiled train step:

    groups = param_groups(model, weight_decay=0.1)
    optimizer = AdamW(groups)                          # betas (0.9, 0.95), eps 1e-6
    grad_fn = ms.value_and_grad(loss_fn, None, optimizer.params)

    @ms.jit
    def train_step(batch, lr):                         # lr: a float32 Tensor
        loss, grads = grad_fn(batch)
        grads, norm = clip_by_global_norm(grads, 5.0)
        optimizer(grads, lr)
        return loss, norm

    for step in range(total_steps):
        lr = cosine_with_min_lr(step, total_steps, 30, 1e-5, 1e-6)
        loss, norm = train_step(batch, ms.Tensor(lr, ms.float32))
"""

from __future__ import annotations

import math
import re

import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, nn, ops

__all__ = ["AdamW", "bias_correction_table", "clip_by_global_norm", "cosine_with_min_lr", "param_groups"]

# transformers' Trainer.get_decay_parameter_names: no decay for a parameter whose lower-cased
# full name matches one of these, or that belongs to a LayerNorm layer.
NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
_NO_DECAY = tuple(re.compile(p) for p in NO_DECAY_PATTERNS)


def _layernorm_types() -> tuple[type, ...]:
    types = [nn.LayerNorm]
    mint_layernorm = getattr(getattr(ms.mint, "nn", None), "LayerNorm", None)
    if isinstance(mint_layernorm, type):
        types.append(mint_layernorm)
    return tuple(types)


def param_groups(model: nn.Cell, weight_decay: float) -> list[dict]:
    """The trainable parameters of `model` in two AdamW groups, decayed and not.

    Returns `[{"params": [...], "weight_decay": weight_decay}, {"params": [...],
    "weight_decay": 0.0}]` (either list may be empty), parameters in `model`'s order.
    The rule is transformers' Trainer's (`get_decay_parameter_names`, which BAAI's fine-tuning
    uses): no decay for biases and norm weights, i.e. a parameter whose lower-cased name (its
    `Parameter.name`, the checkpoint's: emu3-lm's parameters carry the checkpoint's names)
    matches `NO_DECAY_PATTERNS` (`bias`, `layernorm`, `rmsnorm`, a `norm` or `*_norm` name
    component) or that belongs to a LayerNorm cell (MindSpore's are named `gamma`/`beta`).
    For Emu3 that leaves out `*.input_layernorm.weight`, `*.post_attention_layernorm.weight`
    and `model.norm.weight`; every other weight is decayed.
    """
    in_layernorm = set()
    for _, cell in model.cells_and_names():
        if isinstance(cell, _layernorm_types()):
            in_layernorm.update(id(p) for p in cell.get_parameters())
    decay, no_decay = [], []
    for p in model.trainable_params():
        skip = id(p) in in_layernorm or any(rx.search(p.name.lower()) for rx in _NO_DECAY)
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": float(weight_decay)},
            {"params": no_decay, "weight_decay": 0.0}]


def cosine_with_min_lr(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """The learning rate of optimiser step `step` (0 for the first step).

    transformers' `get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup_steps,
    total_steps, min_lr=min_lr)` over an optimiser created with `lr`, as torch's LambdaLR
    applies it: the first step uses the value at 0, the next one the value at 1 after one
    `scheduler.step()`, and so on. Linear warmup from 0 (so step 0 has lr 0 when
    `warmup_steps > 0`), then half a cosine from `lr` down to `min_lr` at `total_steps`; the
    same formula, in the same order of float operations, so the values are equal. Like
    transformers, the cosine is not clamped past `total_steps` (it rises again).
    """
    if step < 0 or warmup_steps < 0:
        raise ValueError(f"step and warmup_steps must be >= 0, got {step} and {warmup_steps}")
    if lr <= 0 or min_lr < 0:
        raise ValueError(f"lr must be > 0 and min_lr >= 0, got lr={lr}, min_lr={min_lr}")
    min_lr_rate = min_lr / lr
    if step < warmup_steps:
        factor = float(step) / float(max(1, warmup_steps))
    else:
        progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
        factor = 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress))
        factor = max(0, factor * (1 - min_lr_rate) + min_lr_rate)
    return lr * factor


def clip_by_global_norm(grads, max_norm: float):
    """`(clipped grads, total_norm)` as `torch.nn.utils.clip_grad_norm_(params, max_norm)`.

    `total_norm` is the 2-norm of all gradients taken together, in float32 whatever their
    dtype (the norm of the per-tensor norms, as torch computes it); every gradient is
    multiplied by `min(max_norm / (total_norm + 1e-6), 1)`, so below the threshold they come
    back unchanged. Pure tensor operations, no host sync: call it inside an `ms.jit` step.
    (`mindspore.ops.clip_by_global_norm` scales by `max_norm / max(total_norm, max_norm)`:
    torch's coefficient differs by the 1e-6, so it is written out here.)
    """
    if len(grads) == 0:
        return grads, ops.zeros((), ms.float32)
    norms = [ops.sqrt(ops.sum(ops.square(g.astype(ms.float32)))) for g in grads]
    total_norm = ops.sqrt(ops.sum(ops.square(ops.stack(norms))))
    coef = ops.minimum(max_norm / (total_norm + 1e-6), 1.0)
    return tuple(g * coef.astype(g.dtype) for g in grads), total_norm


# Longest bias-correction table kept: past it, 1 - beta**t is taken as its last entry (for
# beta 0.99999, 3e-5 from 1 after 2**20 steps); for betas up to 0.9999 the table runs to 1.0.
MAX_TABLE_STEPS = 1 << 20


def bias_correction_table(beta1: float, beta2: float) -> np.ndarray:
    """`[N, 2]` float32: `1 - beta1**t` and `sqrt(1 - beta2**t)` for t = 1..N, from float64.

    This is torch's arithmetic (its bias corrections are float64 numbers on the host, rounded
    once to float32 by the kernels). N is the first step where both have reached 1.0 in float32,
    so that `table[min(t, N) - 1]` serves every step. Inside the graph they cannot be computed
    as well in float32: `1 - pow(beta2, t)` cancels (1.3e-5 off for beta2 0.999 at t = 1) and
    MindSpore's CPU exp, log and expm1 are approximations (4e-6 relative for exp).
    """
    lengths = [1]
    for beta in (beta1, beta2):
        if beta > 0:  # beta**t below 2**-25: 1 - beta**t rounds to 1.0 in float32
            lengths.append(math.ceil(-25 * math.log(2) / math.log(beta)) + 1)
    n = min(max(lengths), MAX_TABLE_STEPS)
    t = np.arange(1, n + 1, dtype=np.float64)
    table = np.stack([1.0 - beta1 ** t, np.sqrt(1.0 - beta2 ** t)], axis=1)
    return table.astype(np.float32)


class AdamW(nn.Cell):
    """torch.optim.AdamW, step for step, callable inside an `ms.jit`-compiled train step.

    `AdamW(params, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.0)`: `params` is an iterable of
    Parameters or of groups `{"params": [...], "weight_decay": wd}` (`param_groups(model,
    0.1)` builds the recipe's; a group without "weight_decay" takes the argument). Call
    `optimizer(grads, lr)` with the gradients in the order of `optimizer.params` and the
    learning rate as a float32 Tensor: inside a compiled step a Python float would be a
    constant and each new value would compile a new graph.

    Per parameter, in the order of operations of torch's `_single_tensor_adam` (AdamW is
    Adam with `decoupled_weight_decay=True`), t being the step count after the increment:

        p     = p * (1 - lr * wd)
        m     = m + (1 - beta1) * (g - m)             # exp_avg.lerp_(g, 1 - beta1)
        v     = v * beta2 + (1 - beta2) * g * g       # exp_avg_sq.mul_(beta2).addcmul_(g, g)
        denom = sqrt(v) / sqrt(1 - beta2**t) + eps    # eps after the bias-corrected sqrt
        p     = p + (-lr / (1 - beta1**t)) * m / denom

    The moments `exp_avg`, `exp_avg_sq` (Parameters named `exp_avg.<name>`,
    `exp_avg_sq.<name>`) are float32 whatever the parameter's dtype (torch keeps them in the
    parameter's dtype); the update is computed in float32 and cast back once. There are no
    float32 master weights: a bf16/fp16 parameter is rounded to its dtype at every step.
    `steps` (an int32 Parameter) counts the steps taken; the bias corrections `1 - beta1**t`,
    `sqrt(1 - beta2**t)` are looked up in `bias_correction_table`, torch's float64 numbers.

    Why not MindSpore's: `mint.optim.AdamW` runs only on Ascend, and `nn.AdamWeightDecay`
    has no bias correction (its first steps are far from torch's; tests/test_optim.py shows
    it); `nn.AdamWeightDecay`/`nn.Adam` also put eps and the decay elsewhere.
    """

    def __init__(self, params, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-6,
                 weight_decay: float = 0.0):
        super().__init__(auto_prefix=False)
        beta1, beta2 = (float(b) for b in betas)
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got eps={eps}, weight_decay={weight_decay}")
        plist, decays = [], []
        for group in _groups(params, weight_decay):
            for p in group["params"]:
                plist.append(p)
                decays.append(float(group["weight_decay"]))
        if not plist:
            raise ValueError("AdamW got an empty parameter list")
        names = [p.name for p in plist]
        if len(set(names)) != len(names) or len({id(p) for p in plist}) != len(plist):
            raise ValueError("AdamW: a parameter appears twice, or two parameters share a name")
        self.beta1, self.beta2, self.eps = beta1, beta2, float(eps)
        # 1 - beta in float64 here, as torch computes it: written `1.0 - self.beta1` inside the
        # compiled graph it is folded in float32 (1 - 0.9 = 0.10000002), 2e-7 off torch's 0.1
        self._one_minus_beta1, self._one_minus_beta2 = 1.0 - beta1, 1.0 - beta2
        table = bias_correction_table(beta1, beta2)
        self._bias_corrections = ms.Tensor(table)  # a constant of the graph, not state
        self._table_steps = len(table)
        self.params = ParameterTuple(plist)
        self.weight_decays = tuple(decays)
        self.exp_avg = ParameterTuple(
            [Parameter(ops.zeros(p.shape, ms.float32), name=f"exp_avg.{p.name}", requires_grad=False)
             for p in plist])
        self.exp_avg_sq = ParameterTuple(
            [Parameter(ops.zeros(p.shape, ms.float32), name=f"exp_avg_sq.{p.name}", requires_grad=False)
             for p in plist])
        self.steps = Parameter(ms.Tensor(0, ms.int32), name="adamw.steps", requires_grad=False)

    def construct(self, grads, lr):
        """One step over all parameters; returns the new step count (int32 Tensor)."""
        steps = self.steps + 1
        ops.assign(self.steps, steps)
        lr = ops.cast(lr, ms.float32)
        row = ops.gather(self._bias_corrections, ops.minimum(steps, self._table_steps) - 1, 0)
        bias_correction1, bias_correction2_sqrt = row[0], row[1]
        neg_step_size = -(lr / bias_correction1)
        for p, g, m, v, wd in zip(self.params, grads, self.exp_avg, self.exp_avg_sq, self.weight_decays):
            g = g.astype(ms.float32)
            new_p = p.astype(ms.float32)
            if wd != 0.0:
                new_p = new_p * (1.0 - lr * wd)
            new_m = m + self._one_minus_beta1 * (g - m)
            new_v = v * self.beta2 + self._one_minus_beta2 * g * g
            denom = ops.sqrt(new_v) / bias_correction2_sqrt + self.eps
            new_p = new_p + neg_step_size * new_m / denom
            ops.assign(m, new_m)
            ops.assign(v, new_v)
            ops.assign(p, new_p.astype(p.dtype))
        return steps


def _groups(params, weight_decay: float) -> list[dict]:
    """torch's accepted forms: Parameters, or dicts with "params" (and "weight_decay")."""
    if isinstance(params, Parameter):
        raise TypeError("params must be an iterable of Parameters or of groups, got one Parameter")
    items = list(params)
    if all(isinstance(item, dict) for item in items):
        groups = []
        for item in items:
            unknown = set(item) - {"params", "weight_decay"}
            if unknown or "params" not in item:
                raise ValueError(f"a parameter group holds 'params' and optionally 'weight_decay', got keys "
                                 f"{sorted(item)}")
            group_params = item["params"]
            group_params = [group_params] if isinstance(group_params, Parameter) else list(group_params)
            if not all(isinstance(p, Parameter) for p in group_params):
                raise TypeError("a parameter group's 'params' must be Parameters")
            wd = float(item.get("weight_decay", weight_decay))
            if wd < 0:
                raise ValueError(f"weight_decay must be >= 0, got {wd}")
            groups.append({"params": group_params, "weight_decay": wd})
        return groups
    if not all(isinstance(item, Parameter) for item in items):
        raise TypeError("params must be an iterable of Parameters or of dicts (parameter groups)")
    return [{"params": items, "weight_decay": float(weight_decay)}]
