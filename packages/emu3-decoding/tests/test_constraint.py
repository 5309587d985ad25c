"""The constraint tables against the original helper's rule, offset by offset, and the parts of
the constraint that only decoding needs (stack_tables, last_free). The grammar itself is tested
in packages/emu3-lm/tests/test_blocks.py."""

import numpy as np
import pytest
from emu3_decoding import constraint
from emu3_decoding.constraint import last_free, stack_tables
from emu3_lm.blocks import FREE, VisualIds, image_table, video_table

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


def test_stack_and_last_free():
    a, b = image_table(2, 2, IDS), image_table(3, 4, IDS)
    t = stack_tables([a, b], IDS.pad)
    assert t.shape == (2, len(b))
    assert np.array_equal(t[0, : len(a)], a) and np.array_equal(t[1], b)
    assert np.all(t[0, len(a):] == IDS.pad)
    # the last FREE position is the last code of b's last row, followed by eol, eof, eoi, eos
    assert last_free(t) == len(b) - 5
    assert last_free(t[:, -3:]) == -1
    # a video: the last code of the last frame, followed by eol, eof, eoi, eos
    v = video_table(3, 2, 2, IDS)[None]
    assert last_free(v) == v.shape[1] - 5


def test_free_is_the_grammars():
    # the decode loop imports FREE from .constraint; it must be emu3_lm.blocks' value
    assert constraint.FREE is FREE == -1
