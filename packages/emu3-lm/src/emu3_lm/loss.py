"""Next-token cross-entropy through the lm_head, chunked so that fp32 logits of the whole
vocabulary never exist for more than a chunk of tokens, forward or backward.

At the real vocabulary (184622) and 8192 tokens the fp32 logits alone are 6 GB, and an
autodiff backward would keep every chunk's softmax alive until the weights' gradient is
formed. So the head and the loss are one Cell with its own backward (`bprop`), and the
gradients are formed in the forward, chunk by chunk (a fused linear cross-entropy): each
chunk's logits are turned into its loss and into (softmax - onehot), multiplied out at once
into the gradients of the hidden states [tokens, hidden] and of the head [vocab, hidden]; the
backward only scales them. Three matmuls per chunk, where a backward that recomputes the
logits needs four (at bench-1b's vocabulary the head is most of a train step). Peak extra
memory is one chunk of [chunk_tokens, vocab] fp32 plus the head's gradient, which the backward
forms anyway. A loss computed without a gradient pays for the two gradient matmuls too.

Numerics follow transformers' `ForCausalLMLoss`: logits in the model's dtype from the matmul,
then fp32 for log-softmax; the mean over tokens whose label is not IGNORE_INDEX.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

IGNORE_INDEX = -100  # label of a position that is not supervised (prompt, padding)
CHUNK_ELEMENTS = 1 << 25  # fp32 logits per chunk: 128 MiB (181 tokens at the real vocabulary)


def chunk_tokens(vocab_size: int) -> int:
    """Tokens per chunk for a vocabulary: as many as fit CHUNK_ELEMENTS."""
    return max(1, CHUNK_ELEMENTS // vocab_size)


class _FusedHeadLoss(nn.Cell):
    """(sum of the chunk losses, d sum / d h, d sum / d w), all computed in the forward; the
    backward only scales the two gradients by the incoming one."""

    def __init__(self, chunk: int):
        super().__init__()
        self.chunk = int(chunk)
        self.matmul_t = ops.MatMul(transpose_b=True)  # h W^T
        self.matmul = ops.MatMul()  # g W
        self.matmul_a = ops.MatMul(transpose_a=True)  # g^T h

    def _chunk(self, h, w, labels, weights):
        """One chunk: its loss sum, d/dh [n, hidden] (h's dtype), d/dw [vocab, hidden] (fp32)."""
        logits = self.matmul_t(h.astype(w.dtype), w).astype(ms.float32)
        keep = (labels != IGNORE_INDEX).astype(ms.int32)
        target = labels * keep
        weight = keep.astype(ms.float32) * weights  # x 1.0 is exact: unweighted sums are unchanged
        lse = ops.logsumexp(logits, -1, True)
        picked = ops.gather_elements(logits, 1, target.reshape(-1, 1)).reshape(-1)
        loss = ((lse.reshape(-1) - picked) * weight).sum()
        # (softmax - onehot) of the supervised rows, the onehot subtracted in place
        g = ops.exp(logits - lse) * weight.reshape(-1, 1)
        rows = ops.cumsum(ops.ones_like(target), 0) - 1
        g = ops.tensor_scatter_add(g, ops.stack((rows, target), 1), -weight)
        return loss, self.matmul(g.astype(w.dtype), w).astype(h.dtype), self.matmul_a(g, h.astype(ms.float32))

    # The chunks are unrolled (static bounds); tuples, not lists, carry them through the graph.
    def construct(self, h, w, labels, weights):
        c = self.chunk
        total, dh, dw = self._chunk(h[0:c], w, labels[0:c], weights[0:c])
        dhs = (dh,)
        for s in range(c, h.shape[0], c):
            loss, dh, gw = self._chunk(h[s:s + c], w, labels[s:s + c], weights[s:s + c])
            total = total + loss
            dhs = dhs + (dh,)
            dw = dw + gw
        return total, ops.concat(dhs, 0), dw.astype(w.dtype)

    def bprop(self, h, w, labels, weights, out, dout):
        scale = dout[0]
        return (out[1] * scale.astype(out[1].dtype), out[2] * scale.astype(out[2].dtype), labels * 0,
                weights * 0)


class HeadCrossEntropy(nn.Cell):
    """sum over supervised rows of -log softmax(h W^T)[label], chunked, with its gradients.

    construct(h [N, hidden], w [vocab, hidden], labels int32 [N], weights fp32 [N] or None) ->
    0-d fp32 sum; rows whose label is IGNORE_INDEX contribute nothing (value or gradient); a
    row's term is multiplied by its weight (None: all 1, the plain sum). `chunk` tokens per
    chunk (a compile-time constant; the chunks are unrolled in the graph).
    """

    def __init__(self, chunk: int):
        super().__init__()
        self.fused = _FusedHeadLoss(chunk)

    @property
    def chunk(self) -> int:
        return self.fused.chunk

    def construct(self, h, w, labels, weights=None):
        if weights is None:
            weights = ops.ones(labels.shape, ms.float32)
        return self.fused(h, w, labels, weights)[0]
