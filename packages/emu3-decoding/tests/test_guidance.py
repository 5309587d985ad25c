"""Guidance: batched and unbatched branches agree step by step; the formula against full forwards."""

import numpy as np
import pytest
from emu3_decoding.guidance import left_pad
from emu3_decoding.loop import guided_scores
from mindspore import Tensor

SCALE = 3.0


def prompts(ids):
    # cond and uncond rows of different lengths, so that batching pads them differently
    cond = [[ids.bos, 11, 12, 13, 14, 15, ids.boi, 52, ids.img], [ids.bos, 21, ids.boi, 52, ids.img]]
    neg = [[ids.bos, 31, 32, ids.boi, 52, ids.img],
           [ids.bos, 41, 42, 43, 44, 45, 46, 47, ids.boi, 52, ids.img]]
    return cond, neg


def forced_tokens(ids, b, t, seed=0):
    rng = np.random.default_rng(seed)
    tokens = ids.visual_start + rng.integers(0, ids.num_visual, (b, t))
    tokens[:, min(3, t - 1)] = ids.eol
    return tokens


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def full_forward_logits(model, rows):
    """Logits at the last position of each row, from a forward without cache."""
    padded, mask = left_pad(rows, model.config.pad_token_id)
    out = model(Tensor(np.asarray(padded, np.int32)), Tensor(np.asarray(mask, np.int32))).asnumpy()
    return out[:, -1]


def test_batched_and_unbatched_give_the_same_guided_scores(tiny_model, ids):
    cond, neg = prompts(ids)
    tokens = forced_tokens(ids, 2, 8)
    vis = (ids.visual_start, ids.visual_stop)
    kw = {"cfg_scale": SCALE, "vocab_range": vis}
    batched = guided_scores(tiny_model, cond, neg, tokens, batched_cfg=True, **kw)
    unbatched = guided_scores(tiny_model, cond, neg, tokens, batched_cfg=False, **kw)
    assert batched.shape == (8, 2, ids.num_visual)
    diff = np.abs(batched - unbatched).max()
    print(f"\nmax |batched - unbatched| over 8 steps: {diff:.3g}")
    assert diff < 1e-4
    # not vacuous: scores change from step to step and between rows
    assert np.abs(batched[1:] - batched[:-1]).max() > 0.1
    assert np.abs(batched[:, 0] - batched[:, 1]).max() > 0.1


def test_guided_scores_follow_the_original_formula(tiny_model, ids):
    cond, neg = prompts(ids)
    tokens = forced_tokens(ids, 2, 4, seed=1)
    vis = slice(ids.visual_start, ids.visual_stop)
    ours = guided_scores(tiny_model, cond, neg, tokens, cfg_scale=SCALE, vocab_range=(vis.start, vis.stop))
    for t in range(tokens.shape[1]):
        c = full_forward_logits(tiny_model, [p + tokens[i, :t].tolist() for i, p in enumerate(cond)])
        u = full_forward_logits(tiny_model, [p + tokens[i, :t].tolist() for i, p in enumerate(neg)])
        # over the computed slice: the formula as written
        lc, lu = log_softmax(c[:, vis]), log_softmax(u[:, vis])
        np.testing.assert_allclose(ours[t], SCALE * (lc - lu) + lu, atol=1e-4)
        # transformers' processor takes log-softmax over the whole vocabulary: the guided visual
        # scores differ from ours by a constant per row, so argmax and sampling are unchanged
        full = SCALE * (log_softmax(c) - log_softmax(u)) + log_softmax(u)
        shift = full[:, vis] - ours[t]
        assert np.abs(shift - shift[:, :1]).max() < 1e-4
        assert np.array_equal(full[:, vis].argmax(-1), ours[t].argmax(-1))


def test_guidance_needs_negative_prompts(tiny_model, ids):
    cond, _ = prompts(ids)
    with pytest.raises(ValueError, match="negative_prompts"):
        guided_scores(tiny_model, cond, None, forced_tokens(ids, 2, 2), cfg_scale=SCALE)
    with pytest.raises(ValueError, match="negative prompts"):
        guided_scores(tiny_model, cond, cond[:1], forced_tokens(ids, 2, 2), cfg_scale=SCALE)


def test_left_pad():
    ids, mask = left_pad([[1, 2, 3], [4]], pad=0)
    assert ids == [[1, 2, 3], [0, 0, 4]] and mask == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError):
        left_pad([[1], []], pad=0)
