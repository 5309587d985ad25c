"""Classifier-free guidance, with the original formula.

transformers' `UnbatchedClassifierFreeGuidanceLogitsProcessor` (which the original
image_generation.py uses) takes log-softmax of both branches over the whole vocabulary and
returns  scale * (logsoftmax(c) - logsoftmax(u)) + logsoftmax(u).

Here the log-softmax is taken over the slice of the vocabulary that is computed (the visual
tokens while generating an image). Over a slice S, logsoftmax_S(x) = logsoftmax(x) + LSE(x) -
LSE_S(x): each branch moves by a constant per row, so the guided row moves by a constant per
row too. Argmax, top-k, top-p and softmax sampling are unchanged by such a shift: the tokens
are the same as with the full-vocabulary formula followed by the prefix constraint.

Two ways to get the unconditional logits:
- batched (default): cond and uncond prompts as 2B rows of one batch, left-padded to a common
  length, positions from the attention mask, one forward per step;
- unbatched (the original): a second forward over its own cache.
With positions taken from the mask, both give the same guided logits (up to fp32 rounding).
"""

from __future__ import annotations

from mindspore import ops

from .sampling import finite


def check_scale(scale, name: str = "cfg_scale") -> float:
    """The guidance scale as a float: any finite number (1.0: no guidance). NaN or inf would make
    every guided row NaN, and the sampler would draw code 0 at every step: a flat image."""
    return finite(scale, name)


def guide(cond, uncond, scale: float):
    """Guided log-probabilities [B, n] from cond and uncond logits [B, n] over the same slice."""
    log_c = ops.log_softmax(cond, -1)
    if scale == 1.0:
        return log_c
    log_u = ops.log_softmax(uncond, -1)
    return scale * (log_c - log_u) + log_u


def split_rows(logits):
    """Batched layout: the first half of the rows is cond, the second half uncond."""
    b = logits.shape[0] // 2
    return logits[:b], logits[b:]


def left_pad(rows: list[list[int]], pad: int) -> tuple[list[list[int]], list[list[int]]]:
    """Token rows left-padded to a common length: (ids, attention mask with 0 on padding)."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every prompt must have at least one token")
    n = max(len(r) for r in rows)
    ids = [[pad] * (n - len(r)) + list(r) for r in rows]
    mask = [[0] * (n - len(r)) + [1] * len(r) for r in rows]
    return ids, mask
