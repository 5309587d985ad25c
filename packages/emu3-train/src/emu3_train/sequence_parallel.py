"""Ulysses sequence parallelism: P ranks each hold 1/P of every sequence.

Everything outside attention works token by token, so each rank runs the embeddings, the
projections, the MLPs, the norms and the head on its own slice of S/P positions (with the
global positions of that slice for RoPE). Around the attention core, an all-to-all trades
sequence for heads:

    q, k, v [B, H, S/P, D] --all-to-all--> [B, H/P, S, D]    (this rank's heads, every position)
    core over the whole sequence with the FULL mask description (attention.mask_spec)
    out [B, S, H/P, D]     --all-to-all--> [B, S/P, H, D]    (every head, this rank's positions)

The inner core is the layer's own kind (matmul or flash, emu3_lm.attention) built for H/P query
and Hkv/P key/value heads: the query heads of rank r, r*H/P.., use exactly the key/value heads
r*Hkv/P.. (grouped-query attention keeps consecutive query heads per key/value head), so H and
Hkv must divide by P. Each layer's `self_attn.core` is wrapped in place (`enable`); emu3-lm is
unchanged, and a model with P = 1 is left as it is.

The loss: each rank scores its slice of the already shifted labels (`split_batch`); the
engine sums over ranks and divides by the global count of supervised tokens.
"""

from __future__ import annotations

import numpy as np
from emu3_lm.loss import IGNORE_INDEX
from mindspore import nn

from .collectives import AlltoAll, Group


class UlyssesAttention(nn.Cell):
    """An attention core over this rank's slice of the sequence, computed as `inner` over the
    whole sequence for H/P heads (see the module docstring). construct(q, k, v, mask) takes
    q [B, H, S/P, D], k/v [B, Hkv, S/P, D] and the full sequence's mask description; returns
    [B, S/P, H*D] like any core."""

    def __init__(self, inner: nn.Cell, num_heads: int, head_dim: int, group: Group):
        super().__init__()
        self.inner = inner
        self.heads_here = num_heads // group.size
        self.head_dim = head_dim
        self.size = group.size
        self.to_heads = AlltoAll(group, split_axis=1, concat_axis=2)  # [B, H, s, D] -> [B, H/P, S, D]
        self.to_sequence = AlltoAll(group, split_axis=1, concat_axis=2)  # [B, S, H/P, D] -> [B, s, H, D]

    def construct(self, q, k, v, mask):
        b, s = q.shape[0], q.shape[2] * self.size
        o = self.inner(self.to_heads(q), self.to_heads(k), self.to_heads(v), mask)  # [B, S, H/P*D]
        o = self.to_sequence(o.reshape(b, s, self.heads_here, self.head_dim))
        return o.reshape(b, s // self.size, self.heads_here * self.size * self.head_dim)


def check_heads(config, size: int) -> None:
    """ValueError unless the query and key/value heads divide among `size` ranks."""
    h, hkv = config.num_attention_heads, config.num_key_value_heads
    if h % size or hkv % size:
        raise ValueError(f"sequence parallel over {size} ranks needs num_attention_heads ({h}) and "
                         f"num_key_value_heads ({hkv}) divisible by {size}")


def enable(model, group: Group) -> None:
    """Wrap every layer's attention core of an Emu3ForCausalLM for sequence parallelism over `group`.

    In place; idempotent; nothing to do for a group of one."""
    if group.size == 1:
        return
    cfg = model.config
    check_heads(cfg, group.size)
    p = group.size
    for layer in model.model.layers:
        attn = layer.self_attn
        if isinstance(attn.core, UlyssesAttention):
            continue
        kind = type(attn.core)  # an emu3_lm.attention.IMPLEMENTATIONS class
        inner = kind(attn.num_heads // p, attn.num_kv_heads // p, attn.head_dim, attn.core.dropout)
        attn.core = UlyssesAttention(inner, attn.num_heads, attn.head_dim, group)


def positions(attention_mask: np.ndarray) -> np.ndarray:
    """Each row's count of real tokens so far, minus one (emu3_lm.model.sequence_inputs' rule)."""
    return np.maximum(np.cumsum(attention_mask.astype(np.int64), axis=1) - 1, 0).astype(np.int32)


def _shift(a: np.ndarray, fill) -> np.ndarray:
    shifted = np.full_like(a, fill)
    shifted[:, :-1] = a[:, 1:]
    return shifted


def shift_labels(labels: np.ndarray) -> np.ndarray:
    """labels [B, L] unshifted -> the label each position predicts (labels[:, t+1]; the last none)."""
    return _shift(np.asarray(labels), IGNORE_INDEX).astype(np.int32)


def split_batch(input_ids, labels, attention_mask, size: int, rank: int,
                loss_weights=None) -> dict[str, np.ndarray]:
    """One rank's share of a right-padded batch of full sequences [B, L] (L % size == 0):

    input_ids, positions, shifted labels of positions [rank*L/size, (rank+1)*L/size), and the
    whole attention_mask (the attention core sees every key). size 1: the whole sequence.
    `loss_weights` (fp32 [B, L], aligned with the unshifted labels; None: all 1) are shifted and
    split as the labels.
    """
    input_ids, labels, attention_mask = (np.asarray(a) for a in (input_ids, labels, attention_mask))
    if loss_weights is None:
        loss_weights = np.ones(labels.shape, np.float32)
    n = input_ids.shape[1]
    if n % size:
        raise ValueError(f"sequence length {n} is not divisible by sequence_parallel {size}")
    lo, hi = rank * n // size, (rank + 1) * n // size
    return {
        "input_ids": np.ascontiguousarray(input_ids[:, lo:hi], dtype=np.int32),
        "labels": np.ascontiguousarray(shift_labels(labels)[:, lo:hi]),
        "loss_weights": np.ascontiguousarray(_shift(np.asarray(loss_weights, np.float32), 0.0)[:, lo:hi]),
        "positions": np.ascontiguousarray(positions(attention_mask)[:, lo:hi]),
        "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int32),
    }
