"""Next-token cross-entropy through the lm_head, chunked so that fp32 logits of the whole
vocabulary never exist for more than a chunk of tokens, forward or backward.

At the real vocabulary (184622) and 8192 tokens the fp32 logits alone are 6 GB, and an
autodiff backward would keep every chunk's softmax alive until the weights' gradient is
formed. So the head and the loss are one Cell with its own backward (`bprop`): the forward
keeps nothing but the loss, the backward recomputes each chunk's logits, turns them into
(softmax - onehot) and multiplies out the gradients of the hidden states and of the head.
Peak extra memory is one chunk of [chunk_tokens, vocab] fp32, whatever the sequence length.

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


class HeadCrossEntropy(nn.Cell):
    """sum over supervised rows of -log softmax(h W^T)[label], with a chunked backward.

    construct(h [N, hidden], w [vocab, hidden], labels int32 [N]) -> 0-d fp32 sum; rows whose
    label is IGNORE_INDEX contribute nothing (value or gradient). `chunk` tokens per chunk
    (a compile-time constant; the chunks are unrolled in the graph).
    """

    def __init__(self, chunk: int):
        super().__init__()
        self.chunk = int(chunk)
        self.matmul_t = ops.MatMul(transpose_b=True)  # h W^T
        self.matmul = ops.MatMul()  # g W
        self.matmul_a = ops.MatMul(transpose_a=True)  # g^T h

    def _chunk_terms(self, h, w, labels):
        """fp32 logits [n, V], the safe label index, the 0/1 weight of each row."""
        logits = self.matmul_t(h.astype(w.dtype), w).astype(ms.float32)
        keep = (labels != IGNORE_INDEX).astype(ms.int32)
        return logits, labels * keep, keep.astype(ms.float32)

    def _chunk_loss(self, h, w, labels):
        logits, target, weight = self._chunk_terms(h, w, labels)
        picked = ops.gather_elements(logits, 1, target.reshape(-1, 1)).reshape(-1)
        return ((ops.logsumexp(logits, -1) - picked) * weight).sum()

    def _chunk_grads(self, h, w, labels, dout):
        """d/dh [n, hidden] (h's dtype) and d/dw [vocab, hidden] (fp32) of one chunk's sum."""
        logits, target, weight = self._chunk_terms(h, w, labels)
        scale = weight * dout
        # (softmax - onehot) * scale, the onehot subtracted in place (no second [n, vocab] tensor)
        g = ops.softmax(logits, -1) * scale.reshape(-1, 1)
        rows = ops.cumsum(ops.ones_like(target), 0) - 1
        g = ops.tensor_scatter_add(g, ops.stack((rows, target), 1), -scale)
        return self.matmul(g.astype(w.dtype), w).astype(h.dtype), self.matmul_a(g, h.astype(ms.float32))

    # The chunks are unrolled (static bounds); tuples, not lists, carry them through the graph.
    def construct(self, h, w, labels):
        c = self.chunk
        total = self._chunk_loss(h[0:c], w, labels[0:c])
        for s in range(c, h.shape[0], c):
            total = total + self._chunk_loss(h[s:s + c], w, labels[s:s + c])
        return total

    def bprop(self, h, w, labels, out, dout):
        c = self.chunk
        dh, dw = self._chunk_grads(h[0:c], w, labels[0:c], dout)
        dhs = (dh,)
        for s in range(c, h.shape[0], c):
            dh, gw = self._chunk_grads(h[s:s + c], w, labels[s:s + c], dout)
            dhs = dhs + (dh,)
            dw = dw + gw
        return ops.concat(dhs, 0), dw.astype(w.dtype), labels * 0
