"""The decode loop: constrained blocks, seeds, progress, early stop, forced steps, cache reuse."""

import itertools

import numpy as np
import pytest
from emu3_decoding import loop
from emu3_decoding.constraint import stack_tables
from emu3_decoding.sampling import Sampling
from emu3_lm.blocks import FREE, extract_codes, image_table
from mindspore import ops


def prompt(ids, text):
    return [ids.bos, *text, ids.boi, 52, ids.img]


TOPK = Sampling(top_k=16)


def test_batch_of_sizes_gives_exact_blocks(tiny_model, ids):
    sizes = [(3, 4), (2, 6)]
    table = stack_tables([image_table(h, w, ids) for h, w in sizes], ids.pad)
    out = loop.generate(tiny_model, [prompt(ids, [11, 12]), prompt(ids, [13, 14, 15, 16])], table=table,
                        sampling=TOPK, seed=0)
    assert out.shape == table.shape
    for row, (h, w) in zip(out, sizes):
        n = h * (w + 1) + 3
        codes = extract_codes(row, 1, h, w, ids)  # raises on any layout error
        assert codes.shape == (1, h, w) and codes.min() >= 0 and codes.max() < ids.num_visual
        assert list(row[n - 3:n]) == [ids.eof, ids.eoi, ids.eos]
        assert np.all(row[n:] == ids.pad)
    assert len(np.unique(out[out >= ids.visual_start])) > 4


def test_seed_reproducibility(tiny_model, ids):
    table = image_table(3, 4, ids)
    rows = [prompt(ids, [11, 12])] * 2
    a = loop.generate(tiny_model, rows, table=table, sampling=TOPK, seed=7)
    b = loop.generate(tiny_model, rows, table=table, sampling=TOPK, seed=7)
    c = loop.generate(tiny_model, rows, table=table, sampling=TOPK, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])  # rows of a batch draw their own numbers


def test_forced_positions_need_no_logits(tiny_model, ids, monkeypatch):
    calls = []
    real = loop.decode_one_token
    monkeypatch.setattr(loop, "decode_one_token", lambda *a: calls.append(a[2]) or real(*a))
    h, w = 3, 4
    table = image_table(h, w, ids)
    events = []
    out = loop.generate(tiny_model, [prompt(ids, [11])], table=table, progress=events.append, eol_id=ids.eol)
    assert sorted(calls) == np.nonzero(table == FREE)[0].tolist()  # sampled positions only
    assert [e.step for e in events][-1] == len(table)
    assert all(a.step < b.step for a, b in itertools.pairwise(events))
    assert events[-1].rows_done == events[-1].rows == h
    assert [e.rows_done for e in events if e.step <= w + 1][-1] == 1  # first row done at its eol
    extract_codes(out[0], 1, h, w, ids)


def test_free_text_stops_at_eos(tiny_model, ids):
    p = prompt(ids, [11, 12, 13])
    first = loop.generate(tiny_model, [p], max_new_tokens=8)[0]
    k = next(i for i in range(1, 8) if first[i] not in first[:i])  # a token not emitted before
    events = []
    out = loop.generate(tiny_model, [p], max_new_tokens=8, eos_id=int(first[k]), progress=events.append)[0]
    np.testing.assert_array_equal(out[:k + 1], first[:k + 1])
    assert np.all(out[k + 1:] == ids.pad)
    assert events[-1].step == k + 1 and events[-1].rows_done == 1  # stopped right there


def test_cache_reuse_across_calls(tiny_model, ids):
    # graphs and caches are reused between calls of one size; prompts of other lengths must not
    # see anything of an earlier call
    table = image_table(2, 4, ids)
    neg = [prompt(ids, [31, 32, 33])]
    short, long = [prompt(ids, [11])], [prompt(ids, [21, 22, 23, 24, 25, 26, 27])]
    graphs = []
    for batched in (True, False):
        kw = {"negative_prompts": neg, "cfg_scale": 2.0, "batched_cfg": batched, "table": table}
        first = loop.generate(tiny_model, short, **kw)
        graphs.append(set(map(id, loop._state(tiny_model)["graphs"].values())))
        loop.generate(tiny_model, long, **kw)
        np.testing.assert_array_equal(loop.generate(tiny_model, short, **kw), first)
    # the batched setup (2 rows) stayed compiled while the unbatched one (1 row, 2 caches) ran
    assert graphs[0] <= set(map(id, loop._state(tiny_model)["graphs"].values()))


def test_visual_head_follows_weight_changes(tiny_model, ids):
    rows = [prompt(ids, [11, 12])]
    tokens = np.full((1, 2), ids.visual_start, np.int64)
    vis = (ids.visual_start, ids.visual_stop)
    before = loop.guided_scores(tiny_model, rows, None, tokens, cfg_scale=1.0, vocab_range=vis)
    w = tiny_model.lm_head.weight
    saved = w.copy()
    try:
        ops.assign(w, w * 2)
        after = loop.guided_scores(tiny_model, rows, None, tokens, cfg_scale=1.0, vocab_range=vis)
    finally:
        ops.assign(w, saved)
    np.testing.assert_allclose(after, 2 * before, rtol=1e-5, atol=1e-6)


def test_bad_inputs(tiny_model, ids):
    p = [prompt(ids, [11])]
    with pytest.raises(ValueError, match="max_new_tokens"):
        loop.generate(tiny_model, p)
    with pytest.raises(ValueError, match="context"):
        loop.generate(tiny_model, p, table=image_table(40, 40, ids))
    with pytest.raises(ValueError, match="table"):
        loop.generate(tiny_model, p, table=np.full((2, 5), FREE))
    with pytest.raises(ValueError, match="no prompts"):
        loop.generate(tiny_model, [], max_new_tokens=2)


def test_prompt_buckets_share_a_prefill_and_change_no_score(tiny_model, ids, monkeypatch):
    short, longer = [prompt(ids, [11])], [prompt(ids, [21, 22, 23, 24, 25, 26, 27])]
    setups = [loop.prefill(tiny_model, p, new_tokens=4) for p in (short, longer)]
    # both prompts land in one bucket: same padded length, same cache, same compiled graphs
    assert setups[0].slot0 == setups[1].slot0 == loop.PROMPT_ROUND
    assert setups[0].graphs is setups[1].graphs
    tokens = np.array([[ids.visual_start + 3, ids.visual_start + 5, ids.eol]], np.int64)
    bucketed = loop.guided_scores(tiny_model, longer, None, tokens, cfg_scale=1.0)
    monkeypatch.setattr(loop, "PROMPT_ROUND", 1)
    exact = loop.guided_scores(tiny_model, longer, None, tokens, cfg_scale=1.0)
    assert loop.prefill(tiny_model, longer, new_tokens=4).slot0 == len(longer[0])
    np.testing.assert_allclose(bucketed, exact, rtol=0, atol=2e-5)


def test_head_layout_changes_no_token(tiny_model, ids, monkeypatch):
    # on CPU the decoder multiplies with a W^T copy of lm_head; the accelerators' layout (the
    # model's own W, and W copies of slices) must decode the same tokens
    import dataclasses

    from emu3_vq import device

    assert device.policy().transposed_head  # these tests run on CPU
    p = [prompt(ids, [11, 12, 13])]
    table = image_table(2, 3, ids)

    def run():
        return (loop.generate(tiny_model, p, max_new_tokens=6),
                loop.generate(tiny_model, p, table=table, sampling=TOPK, seed=3))

    transposed = run()
    assert loop._state(tiny_model)["heads"]  # a W^T copy was made
    plain = dataclasses.replace(device.policy(), transposed_head=False)
    monkeypatch.setattr(device, "policy", lambda target=None: plain)
    for a, b in zip(run(), transposed):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("span", ["whole", "visual"])
def test_decode_head_copy_is_made_once_and_follows_the_weights(tiny_model, ids, monkeypatch, span):
    """On CPU the decoder multiplies with a W^T copy of lm_head rows: made once, reused while the
    weights are unchanged, made again when they change (training, loading) so it is never stale."""
    import mindspore as ms

    vocab = tiny_model.config.vocab_size
    start, stop = (0, vocab) if span == "whole" else (ids.visual_start, ids.visual_stop)
    copies = []
    real_rows = loop._rows
    monkeypatch.setattr(loop, "_rows", lambda *a: copies.append(a[1:]) or real_rows(*a))
    weight = tiny_model.lm_head.weight
    original = weight.asnumpy().copy()
    head = loop.decode_head(tiny_model, start, stop)
    assert head.transposed  # the CPU policy
    np.testing.assert_array_equal(head.weight.asnumpy(), original[start:stop].T)
    assert loop.decode_head(tiny_model, start, stop) is head and len(copies) == 1  # reused, not copied
    try:
        changed = original.copy()
        changed[start + 1, 3] += 0.5  # one weight changes
        ops.assign(weight, ms.Tensor(changed))
        again = loop.decode_head(tiny_model, start, stop)
        assert len(copies) == 2
        np.testing.assert_array_equal(again.weight.asnumpy(), changed[start:stop].T)
    finally:
        ops.assign(weight, ms.Tensor(original))
        loop.decode_head(tiny_model, start, stop)
