"""The constraint table against the original helper's rule, offset by offset."""

import numpy as np
import pytest
from emu3_decoding.constraint import (
    FREE,
    VisualIds,
    block_tokens,
    extract_codes,
    frame_table,
    image_table,
    last_free,
    stack_tables,
    video_table,
)

IDS = VisualIds()


@pytest.mark.parametrize("height,width", [(1, 3), (3, 5), (5, 3), (32, 32), (68, 120)])
def test_image_table_matches_original_rule(original_rule, height, width):
    table = image_table(height, width, IDS)
    assert len(table) == height * (width + 1) + 3
    for g, t in enumerate(table):
        rule = original_rule(g + 1, height, width, IDS)
        if rule == "visual":
            assert t == FREE, g
        else:
            assert rule == (t,), g
    assert (table == FREE).sum() == height * width


@pytest.mark.parametrize("width", [1, 2])
def test_narrow_images_where_the_original_rule_breaks(original_rule, width):
    # The original checks `offset % (W+1) == 0` first, so for W = 1 (eoi) and W = 2 (eos) it
    # forces an eol where the block should end. The table keeps the documented layout.
    h = 2
    table = image_table(h, width, IDS)
    assert list(table[-3:]) == [IDS.eof, IDS.eoi, IDS.eos]
    rules = [original_rule(g + 1, h, width, IDS) for g in range(len(table))]
    assert (IDS.eol,) in rules[-2:]


def test_video_table_is_frames_then_end():
    h, w = 3, 4
    table = video_table(3, h, w, IDS)
    frame = frame_table(h, w, IDS)
    assert len(frame) == h * (w + 1) + 1 and frame[-1] == IDS.eof
    assert np.array_equal(table[: 3 * len(frame)], np.tile(frame, 3))
    assert list(table[3 * len(frame):]) == [IDS.eoi, IDS.eos]
    # one frame is exactly the image block
    assert np.array_equal(video_table(1, h, w, IDS), image_table(h, w, IDS))
    open_table = video_table(2, h, w, IDS, close=False)
    assert open_table[-1] == IDS.eof and len(open_table) == 2 * len(frame)


def test_stack_and_last_free():
    a, b = image_table(2, 2, IDS), image_table(3, 4, IDS)
    t = stack_tables([a, b], IDS.pad)
    assert t.shape == (2, len(b))
    assert np.all(t[0, len(a):] == IDS.pad)
    # the last FREE position is the last code of b's last row, followed by eol, eof, eoi, eos
    assert last_free(t) == len(b) - 5
    assert last_free(t[:, -3:]) == -1


def test_block_tokens_round_trip_and_errors():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, IDS.num_visual, size=(2, 3, 4))
    toks = block_tokens(codes, IDS)
    table = video_table(2, 3, 4, IDS, close=False)
    assert len(toks) == len(table)
    forced = table != FREE
    assert np.array_equal(toks[forced], table[forced])
    assert np.array_equal(extract_codes(toks, 2, 3, 4, IDS), codes)
    bad = toks.copy()
    bad[4] = IDS.visual_start  # the first eol replaced by a code
    with pytest.raises(ValueError, match="position 4"):
        extract_codes(bad, 2, 3, 4, IDS)
    bad = toks.copy()
    bad[0] = IDS.eos
    with pytest.raises(ValueError, match="non-visual"):
        extract_codes(bad, 2, 3, 4, IDS)
    with pytest.raises(ValueError, match="too short"):
        extract_codes(toks[:-1], 2, 3, 4, IDS)
    with pytest.raises(ValueError):
        block_tokens(np.array([[IDS.num_visual]]), IDS)
    with pytest.raises(ValueError):
        image_table(0, 3, IDS)
