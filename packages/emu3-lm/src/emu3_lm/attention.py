"""Scaled dot-product attention, one kernel choice per device.

- 'matmul': batched matmuls and an fp32 softmax. Runs everywhere; the choice on CPU and GPU.
  Grouped-query attention is done by folding the query heads of a group into the query
  length, so keys and values are never repeated.
- 'flash': `ops.flash_attention_score`, the fused kernel of Ascend (fp16/bf16 only; handles
  grouped-query attention itself).

`default_implementation()` picks by `emu3_vq.device`; `Emu3LMConfig.attn_implementation`
(or the `attn_implementation` argument of `make_attention`) overrides it.
"""

from __future__ import annotations

import mindspore as ms
from emu3_vq import device
from mindspore import nn, ops

# Added to disallowed scores before the fp32 softmax. Finite, so that a row with nothing to
# attend to gives a uniform average instead of NaN (the model also lets every query see itself).
MASK_VALUE = -1e30


def default_implementation() -> str:
    """'flash' on Ascend, 'matmul' on CPU and GPU."""
    return "flash" if device.device_target() == "Ascend" else "matmul"


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

    def _scores(self, q, k, allowed):
        """Masked fp32 scores [B, Hkv, G, Lq, Lk]. The G query heads that share a key/value head are
        folded into the query length, so keys and values are never repeated."""
        b, h, lq, d = q.shape
        hkv, lk = k.shape[1], k.shape[2]
        g = h // hkv
        s = self.scores(q.reshape(b, hkv, g * lq, d), k)
        s = s.astype(ms.float32).reshape(b, hkv, g, lq, lk) * self.scale
        return ops.masked_fill(s, ops.logical_not(allowed.reshape(b, 1, 1, lq, lk)), MASK_VALUE)

    def _probs(self, s, dtype):
        p = ops.softmax(s, axis=-1).astype(dtype)
        if self.training and self.dropout > 0:
            p = ops.dropout(p, p=self.dropout, training=True)
        return p

    def _heads_out(self, o, lq):
        b, d = o.shape[0], o.shape[-1]
        return o.reshape(b, self.num_heads, lq, d).transpose(0, 2, 1, 3).reshape(b, lq, self.num_heads * d)

    def construct(self, q, k, v, allowed):
        """q [B, H, Lq, D]; k, v [B, Hkv, Lk, D]; allowed bool [B, Lq, Lk]. Returns [B, Lq, H*D]."""
        b, _, lq, _ = q.shape
        hkv, lk = k.shape[1], k.shape[2]
        p = self._probs(self._scores(q, k, allowed), v.dtype)
        return self._heads_out(self.weighted(p.reshape(b, hkv, -1, lk), v), lq)


class FlashAttention(nn.Cell):
    """Ascend's fused flash-attention kernel (fp16/bf16), layout BNSD, mask 1 = discard."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.dropout = dropout

    def construct(self, q, k, v, allowed):
        b, h, lq, d = q.shape
        discard = ops.logical_not(allowed).reshape(b, 1, lq, -1).astype(ms.uint8)
        keep_prob = 1.0 - self.dropout if self.training else 1.0
        o = ops.flash_attention_score(q, k, v, self.num_heads, attn_mask=discard, keep_prob=keep_prob,
                                      scalar_value=self.scale, input_layout="BNSD")
        return o.transpose(0, 2, 1, 3).reshape(b, lq, h * d)


_IMPLEMENTATIONS = {"matmul": MatmulAttention, "flash": FlashAttention}


def make_attention(num_heads: int, num_kv_heads: int, head_dim: int, dropout: float = 0.0,
                   attn_implementation: str | None = None) -> nn.Cell:
    """The attention core for this device (or the named implementation)."""
    name = attn_implementation or default_implementation()
    if name not in _IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {name!r}; known: {sorted(_IMPLEMENTATIONS)}")
    return _IMPLEMENTATIONS[name](num_heads, num_kv_heads, head_dim, dropout)
