"""The image/video block grammar of emu3_lm.blocks: token ids, tables, block tokens, parsing, labels.

Uses the tiny tiktoken tokenizer of emu3_lm.tiny_assets (456 ordinary tokens, 64 visual).
"""

import dataclasses
import re

import numpy as np
import pytest
from emu3_lm.blocks import (
    FREE,
    RELEASED,
    VisualIds,
    block_ids,
    block_tokens,
    emu3_token_ids,
    extract_codes,
    frame_table,
    image_table,
    label_mask,
    num_generated_tokens,
    parse_block,
    prefix_ids,
    video_table,
)
from emu3_lm.config import PRESETS, Emu3LMConfig
from emu3_lm.tiny_assets import build_tokenizer
from emu3_lm.tokenizer import Emu3Tokenizer

IDS = VisualIds()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return Emu3Tokenizer.from_pretrained(build_tokenizer(tmp_path_factory.mktemp("tok") / "t", num_visual_tokens=64))


def _codes(shape, seed=0, n=64):
    return np.random.default_rng(seed).integers(0, n, size=shape)


# ---- token ids --------------------------------------------------------------------------------

def test_released_ids_are_the_documented_ones():
    # EMU3_FACTS: <|endoftext|> 151643, eol 151846, eof 151847, bos 151849, eos 151850,
    # img 151851, boi 151852, eoi 151853, visual 151854 .. 184621
    assert RELEASED == {"pad_token_id": 151643, "eol_token_id": 151846, "eof_token_id": 151847,
                        "bos_token_id": 151849, "eos_token_id": 151850, "img_token_id": 151851,
                        "boi_token_id": 151852, "eoi_token_id": 151853, "first_visual_token_id": 151854,
                        "num_visual_tokens": 32768, "vocab_size": 184622}
    assert (IDS.pad, IDS.eol, IDS.eof, IDS.bos, IDS.eos) == (151643, 151846, 151847, 151849, 151850)
    assert (IDS.img, IDS.boi, IDS.eoi, IDS.visual_start, IDS.visual_stop) == (151851, 151852, 151853, 151854, 184622)
    # the config's defaults come from the same rule
    assert VisualIds.from_config(Emu3LMConfig()) == IDS
    assert Emu3LMConfig().vocab_size == RELEASED["vocab_size"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        IDS.eol = 0


def test_numbering_rule_is_the_tokenizers(tmp_path):
    """Every tokenizer format numbers its special tokens by emu3_token_ids."""
    for fmt in ("tiktoken", "tokenizer.json", "sentencepiece"):
        tok = Emu3Tokenizer.from_pretrained(build_tokenizer(tmp_path / fmt.replace(".", "_"), fmt,
                                                            num_visual_tokens=48))
        rule = emu3_token_ids(tok.text_vocab_size, 48)
        assert VisualIds.from_tokenizer(tok) == VisualIds.from_config(Emu3LMConfig(**rule)), fmt
        assert len(tok) == rule["vocab_size"], fmt
    # the tiny preset is the tiny tokenizer's numbering
    tiny = Emu3LMConfig.from_name("tiny")
    assert tiny.vocab_size == 456 + 211 + 64 == PRESETS["tiny"]["vocab_size"]
    assert emu3_token_ids(456, 64)["eol_token_id"] == 456 + 203
    # config.json without the visual range: the rule places it after <|endoftext|>
    assert Emu3LMConfig.from_dict({"pad_token_id": 456, "vocab_size": 731}).first_visual_token_id == 667


# ---- tables --------------------------------------------------------------------------------------

def test_frame_video_and_image_tables():
    h, w = 3, 4
    frame = frame_table(h, w, IDS)
    assert len(frame) == h * (w + 1) + 1 and frame[-1] == IDS.eof
    assert frame.reshape(-1)[:-1].reshape(h, w + 1)[:, w].tolist() == [IDS.eol] * h
    assert (frame == FREE).sum() == h * w
    table = video_table(3, h, w, IDS)
    assert np.array_equal(table[: 3 * len(frame)], np.tile(frame, 3))
    assert list(table[3 * len(frame):]) == [IDS.eoi, IDS.eos]
    assert len(table) == num_generated_tokens(h, w, frames=3) == 3 * (h * (w + 1) + 1) + 2
    # one frame is exactly the image block
    image = image_table(h, w, IDS)
    assert np.array_equal(video_table(1, h, w, IDS), image)
    assert len(image) == num_generated_tokens(h, w) == h * (w + 1) + 3
    assert num_generated_tokens(90, 90) == 8193
    open_table = video_table(2, h, w, IDS, close=False)
    assert open_table[-1] == IDS.eof and len(open_table) == 2 * len(frame)
    for bad in [lambda: image_table(0, 3, IDS), lambda: frame_table(2, 0, IDS), lambda: video_table(0, 2, 2, IDS),
                lambda: num_generated_tokens(2, 2, frames=0)]:
        with pytest.raises(ValueError, match="positive"):
            bad()


def test_block_tokens_and_extract_codes_round_trip():
    codes = _codes((2, 3, 4), n=IDS.num_visual)
    toks = block_tokens(codes, IDS)
    table = video_table(2, 3, 4, IDS, close=False)
    assert len(toks) == len(table)
    forced = table != FREE
    assert np.array_equal(toks[forced], table[forced])
    assert np.array_equal(toks[~forced], codes.reshape(-1) + IDS.visual_start)
    assert np.array_equal(extract_codes(toks, 2, 3, 4, IDS), codes)
    # an [H, W] image is the one-frame case; trailing eoi/eos are ignored
    img = codes[0]
    assert np.array_equal(block_tokens(img, IDS), block_tokens(img[None], IDS))
    tail = np.concatenate([block_tokens(img, IDS), [IDS.eoi, IDS.eos]])
    assert np.array_equal(extract_codes(tail, 1, 3, 4, IDS)[0], img)


def test_extract_codes_and_block_tokens_errors():
    toks = block_tokens(_codes((2, 3, 4), n=IDS.num_visual), IDS)
    bad = toks.copy()
    bad[4] = IDS.visual_start  # the first eol replaced by a code
    with pytest.raises(ValueError, match="position 4: token 151854, expected 151846"):
        extract_codes(bad, 2, 3, 4, IDS)
    bad = toks.copy()
    bad[0] = IDS.eos
    with pytest.raises(ValueError, match="non-visual token 151850"):
        extract_codes(bad, 2, 3, 4, IDS)
    with pytest.raises(ValueError, match="too short"):
        extract_codes(toks[:-1], 2, 3, 4, IDS)
    with pytest.raises(ValueError, match="out of range"):
        block_tokens(np.array([[IDS.num_visual]]), IDS)
    with pytest.raises(ValueError, match="non-empty"):
        block_tokens(np.zeros((0, 3), int), IDS)
    with pytest.raises(ValueError, match="non-empty"):
        block_tokens(np.zeros((1, 1, 2, 2), int), IDS)
    with pytest.raises(TypeError, match="integers"):
        block_tokens(np.zeros((2, 2)), IDS)


# ---- whole blocks with a tokenizer -----------------------------------------------------------------

def test_prefix_and_block_ids(tok):
    ids = VisualIds.from_tokenizer(tok)
    assert prefix_ids(3, 5, tok) == [tok.boi_id] + tok.encode("3*5") + [tok.img_id]
    codes = _codes((3, 5))
    block = block_ids(codes, tok)
    assert block.dtype == np.int32
    expected = prefix_ids(3, 5, tok)
    for row in codes:
        expected += [tok.first_visual_id + int(c) for c in row] + [tok.eol_id]
    expected += [tok.eof_id, tok.eoi_id]
    assert block.tolist() == expected
    # a video: the prefix once, per frame the rows and eof, eoi once
    video = _codes((3, 2, 4), seed=1)
    vblock = block_ids(video, tok)
    n_prefix = len(prefix_ids(2, 4, tok))
    assert vblock[:n_prefix].tolist() == prefix_ids(2, 4, tok)
    assert vblock[n_prefix:-1].tolist() == block_tokens(video, ids).tolist()
    assert vblock[-1] == tok.eoi_id and (vblock == tok.eof_id).sum() == 3
    # generated after the prompt's img: everything but the prefix, then eos
    assert len(vblock) - n_prefix + 1 == num_generated_tokens(2, 4, frames=3)


def test_parse_block_image_and_video(tok):
    codes = _codes((3, 5))
    parsed = parse_block(block_ids(codes, tok), tok)
    assert parsed.shape == (1, 3, 5) and parsed.dtype == np.int64
    np.testing.assert_array_equal(parsed[0], codes)
    video = _codes((3, 2, 4), seed=2)
    block = block_ids(video, tok).tolist()
    np.testing.assert_array_equal(parse_block(block, tok), video)
    # the same block written the original way, as one string tokenised in one go
    rows = [[f"<|visual token {int(c):06d}|>" for c in row] for frame in video for row in frame]
    text = tok.boi_token + "2*4" + tok.img_token
    for f in range(3):
        text += "".join("".join(r) + tok.eol_token for r in rows[2 * f:2 * f + 2]) + tok.eof_token
    assert tok.encode(text + tok.eoi_token) == block


def _video_block(tok, t=3, h=2, w=4):
    block = block_ids(_codes((t, h, w), seed=3), tok).tolist()
    return block, len(prefix_ids(h, w, tok)), h * (w + 1) + 1  # block, index of the first code, frame length


def test_parse_block_names_a_wrong_structural_token(tok):
    block, start, frame = _video_block(tok)
    eof = start + frame - 1  # the eof closing frame 0
    bad = block[:eof] + [tok.eol_id] + block[eof + 1:]
    with pytest.raises(ValueError, match=f"frame 0 has more than 2 rows.*position {eof + 7}"):
        parse_block(bad, tok, position=7)
    bad = block[:eof] + [tok.bos_id] + block[eof + 1:]
    with pytest.raises(ValueError, match=f"position {eof}, expected '<\\|extra_201\\|>' closing frame 0"):
        parse_block(bad, tok)
    eol = start + frame + 4  # the eol closing row 0 of frame 1
    bad = block[:eol] + [tok.eof_id] + block[eol + 1:]
    with pytest.raises(ValueError, match=f"position {eol}, expected '<\\|extra_200\\|>' closing row 0 of frame 1"):
        parse_block(bad, tok)
    with pytest.raises(ValueError, match="does not end with"):
        parse_block(block[:-2] + [tok.eoi_id], tok)
    with pytest.raises(ValueError, match="must start with"):
        parse_block(block[1:], tok)
    with pytest.raises(ValueError, match="has no"):
        parse_block([x for x in block if x != tok.img_id], tok)


def test_parse_block_names_a_short_or_long_row(tok):
    block, start, frame = _video_block(tok)
    row = start + 2 * frame + 5  # row 1 of frame 2
    short = block[:row] + block[row + 1:]
    with pytest.raises(ValueError, match=f"row 1 has 3 visual tokens, expected 4 \\(frame 2, eol at position {row + 3}\\)"):
        parse_block(short, tok)
    long = block[:row] + [tok.first_visual_id] + block[row:]
    with pytest.raises(ValueError, match=f"row 1 has more than 4 visual tokens \\(frame 2, token .* position {row + 4}\\)"):
        parse_block(long, tok)
    # a frame with a row missing
    fewer = block[:start + frame] + block[start + frame + 5:]
    with pytest.raises(ValueError, match="frame 1 has 1 rows, but its size text says '2\\*4'"):
        parse_block(fewer, tok)


def test_parse_block_names_a_non_visual_token(tok):
    block, start, frame = _video_block(tok)
    p = start + frame + 2
    a = tok.encode("a")[0]
    bad = block[:p] + [a] + block[p + 1:]
    with pytest.raises(ValueError, match=f"token {a} \\('a'\\) at position {p + 100} inside the rows is not a visual"):
        parse_block(bad, tok, position=100)
    # an eoi inside the block is not a visual token either
    bad = block[:p] + [tok.eoi_id] + block[p + 1:]
    with pytest.raises(ValueError, match=f"position {p} inside the rows is not a visual token"):
        parse_block(bad, tok)


def test_parse_block_checks_the_size_text(tok):
    codes = _codes((2, 4))
    block = block_ids(codes, tok).tolist()
    rows = block[len(prefix_ids(2, 4, tok)):]
    for text in ("2x4", "", "2*", "0*4"):
        bad = [tok.boi_id] + tok.encode(text) + [tok.img_id] + rows
        with pytest.raises(ValueError, match=re.escape(f"size text {text!r} at position 1")):
            parse_block(bad, tok)
    # a size text that parses but disagrees with the rows
    wider = [tok.boi_id] + tok.encode("2*5") + [tok.img_id] + rows
    with pytest.raises(ValueError, match="row 0 has 4 visual tokens, expected 5"):
        parse_block(wider, tok)
    taller = [tok.boi_id] + tok.encode("3*4") + [tok.img_id] + rows
    with pytest.raises(ValueError, match="frame 0 has 2 rows, but its size text says '3\\*4'"):
        parse_block(taller, tok)
    shorter = [tok.boi_id] + tok.encode("1*4") + [tok.img_id] + rows
    with pytest.raises(ValueError, match="frame 0 has more than 1 rows"):
        parse_block(shorter, tok)


def test_label_mask(tok):
    ids = VisualIds.from_tokenizer(tok)
    codes = _codes((2, 3, 4), seed=4)
    seq = np.array([tok.bos_id] + tok.encode("a red circle") + block_ids(codes, tok).tolist() + [tok.eos_id])
    mask = label_mask(seq, ids)
    assert mask.dtype == bool and mask.shape == seq.shape
    assert mask.sum() == codes.size
    np.testing.assert_array_equal(seq[mask] - ids.visual_start, codes.reshape(-1))
    assert not mask[seq == tok.eol_id].any() and not mask[seq == tok.eof_id].any()
    # the edges of the visual range, and a batch
    edges = np.array([[ids.visual_start - 1, ids.visual_start], [ids.visual_stop - 1, ids.visual_stop]])
    assert label_mask(edges, ids).tolist() == [[False, True], [True, False]]
    assert label_mask(np.stack([seq, seq]), ids).sum() == 2 * codes.size
