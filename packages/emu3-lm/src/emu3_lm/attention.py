"""Scaled dot-product attention over a mask *description*, one kernel per device.

The layers never build a dense [B, Lq, Lk] mask themselves: they pass a mask description (`mask_spec`),
which says where each query and key sits and which keys are real, and each attention core
turns it into what its kernel wants. The rule, for query i at slot q_i and key j at slot k_j:

    allowed(i, j) = (k_j <= q_i and key j is real and segment(i) == segment(j)) or k_j == q_i

(causal over real keys, within one packed sample; a padding query sees itself, so no softmax
row is empty). Training and prefill use slots 0..L-1 for both; a cached step uses the cache's
slots for keys and the new tokens' slots for queries.

- 'matmul': batched matmuls and an fp32 softmax. Runs everywhere; the choice on CPU and GPU.
  Grouped-query attention is done by folding the query heads of a group into the query
  length, so keys and values are never repeated.
- 'flash': `ops.flash_attention_score`, the fused kernel of Ascend (fp16/bf16 only; handles
  grouped-query attention itself).

`emu3_vq.device.policy().attention` picks by device; `Emu3LMConfig.attn_implementation` (or
the `attn_implementation` argument of `make_attention`) overrides it. A wrapper (for example
sequence parallel, which exchanges heads for sequence around the core) registers itself in
`IMPLEMENTATIONS` under a new name and receives the same arguments.
"""

from __future__ import annotations

import mindspore as ms
from emu3_vq import device
from mindspore import Tensor, nn, ops

# Added to disallowed scores before the fp32 softmax. Finite, so that a row with nothing to
# attend to gives a uniform average instead of NaN.
MASK_VALUE = -1e30


def mask_spec(query_slots: Tensor, key_valid: Tensor, segments: Tensor | None = None) -> tuple:
    """A mask description, built inside compiled graphs: the tuple (query_slots, key_valid, segments).

    query_slots: int32 [Lq], the slot of each query (its index in the sequence or cache).
    key_valid: int32 [B, Lk], 1 where key slot j of row b holds a real token; keys sit at
        slots 0..Lk-1.
    segments: None, or int32 [B, L] packed-sample ids (Lq == Lk == L; a query sees keys of
        its own segment only).
    A plain tuple because MindSpore 2.10 cannot differentiate graphs that read NamedTuple fields.
    """
    return (query_slots, key_valid, segments)


def slots(n: int) -> Tensor:
    """int32 [0, 1, ..., n-1] inside a graph. (`ops.arange` fails to compile under
    `value_and_grad` in MindSpore 2.10: "For 'Cast', the input 'dtype' expect a type".)"""
    return ops.cumsum(ops.ones((n,), ms.int32), 0) - 1


def allowed(mask) -> Tensor:
    """The dense bool [B, Lq, Lk] a mask description stands for (see the module docstring)."""
    query_slots, key_valid, segments = mask
    lk = key_valid.shape[1]
    q = query_slots.reshape(1, -1, 1)
    k = slots(lk).reshape(1, 1, lk)
    ok = ops.logical_and(k <= q, key_valid.reshape(-1, 1, lk) > 0)
    if segments is not None:
        ok = ops.logical_and(ok, segments.expand_dims(2) == segments.expand_dims(1))
    return ops.logical_or(ok, k == q)


def default_implementation() -> str:
    """The device policy's choice: 'flash' on Ascend, 'matmul' on CPU and GPU."""
    return device.policy().attention


class MatmulAttention(nn.Cell):
    """softmax(q k^T * scale + mask) v with matmuls; softmax in fp32 whatever the input dtype."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.dropout = dropout
        self.scores = ops.BatchMatMul(transpose_b=True)
        self.weighted = ops.BatchMatMul()

    def _scores(self, q, k, ok):
        """Masked fp32 scores [B, Hkv, G, Lq, Lk]. The G query heads that share a key/value head are
        folded into the query length, so keys and values are never repeated."""
        b, h, lq, d = q.shape
        hkv, lk = k.shape[1], k.shape[2]
        g = h // hkv
        s = self.scores(q.reshape(b, hkv, g * lq, d), k)
        s = s.astype(ms.float32).reshape(b, hkv, g, lq, lk) * self.scale
        return ops.masked_fill(s, ops.logical_not(ok.reshape(ok.shape[0], 1, 1, lq, lk)), MASK_VALUE)

    def _probs(self, s, dtype):
        p = ops.softmax(s, axis=-1).astype(dtype)
        if self.training and self.dropout > 0:
            p = ops.dropout(p, p=self.dropout, training=True)
        return p

    def _heads_out(self, o, lq):
        b, d = o.shape[0], o.shape[-1]
        return o.reshape(b, self.num_heads, lq, d).transpose(0, 2, 1, 3).reshape(b, lq, self.num_heads * d)

    def construct(self, q, k, v, mask):
        """q [B, H, Lq, D]; k, v [B, Hkv, Lk, D]; mask a description (mask_spec). Returns [B, Lq, H*D]."""
        b, _, lq, _ = q.shape
        hkv, lk = k.shape[1], k.shape[2]
        p = self._probs(self._scores(q, k, allowed(mask)), v.dtype)
        return self._heads_out(self.weighted(p.reshape(b, hkv, -1, lk), v), lq)


class FlashAttention(nn.Cell):
    """Ascend's fused flash-attention kernel (fp16/bf16), layout BNSD, mask 1 = discard."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.dropout = dropout

    def construct(self, q, k, v, mask):
        b, h, lq, d = q.shape
        discard = ops.logical_not(allowed(mask)).reshape(-1, 1, lq, k.shape[2]).astype(ms.uint8)
        keep_prob = 1.0 - self.dropout if self.training else 1.0
        o = ops.flash_attention_score(q, k, v, self.num_heads, attn_mask=discard, keep_prob=keep_prob,
                                      scalar_value=self.scale, input_layout="BNSD")
        return o.transpose(0, 2, 1, 3).reshape(b, lq, h * d)


# name -> Cell class taking (num_heads, num_kv_heads, head_dim, dropout); construct(q, k, v, mask)
IMPLEMENTATIONS = {"matmul": MatmulAttention, "flash": FlashAttention}


def make_attention(num_heads: int, num_kv_heads: int, head_dim: int, dropout: float = 0.0,
                   attn_implementation: str | None = None) -> nn.Cell:
    """The attention core for this device (or the named implementation)."""
    name = attn_implementation or default_implementation()
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {name!r}; known: {sorted(IMPLEMENTATIONS)}")
    return IMPLEMENTATIONS[name](num_heads, num_kv_heads, head_dim, dropout)
