"""Emu3Processor: prompt layouts of modes U and G, padding, and image blocks back to images.

Uses a tiny tiktoken tokenizer (emu3_lm.tiny_assets) and the "micro" random-weight vision
tokenizer of emu3_vq (spatial factor 2, 32 codes) with very small images.
"""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from emu3_lm.processor import (
    ASSISTANT_SUFFIX,
    SYSTEM_PROMPT,
    Emu3Processor,
    calculate_generate_size,
    pad_batch,
    parse_ratio,
)
from emu3_lm.tiny_assets import build_hf_tokenizer, build_tiktoken_tokenizer, learn_bpe_ranks
from emu3_lm.tokenizer import Emu3Tokenizer, visual_token
from emu3_vq.model import Emu3VQModel
from emu3_vq.processor import Emu3ImageProcessor
from emu3_vq.tiny import build_tiny_checkpoint


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("proc")
    tok = Emu3Tokenizer.from_pretrained(build_tiktoken_tokenizer(root / "tok", num_visual_tokens=64))
    vq_dir = build_tiny_checkpoint(root / "vq", preset="micro")
    vq = Emu3VQModel.from_pretrained(vq_dir, jit=False)  # pynative: a few tiny calls, no compiles
    # the checkpoint's processor, with pixel limits small enough for 16x16-ish test images
    ip = dataclasses.replace(Emu3ImageProcessor.from_pretrained(vq_dir), min_pixels=8 * 8, max_pixels=16 * 16)
    return {"tok": tok, "vq": vq, "ip": ip, "root": root}


@pytest.fixture(scope="module")
def proc(parts):
    return Emu3Processor(parts["ip"], parts["vq"], parts["tok"], image_area=16 * 16)


def _image(h, w, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _original_image_string(tok, codes):
    """The image block as the original processor writes it (a string), for tokenising."""
    h, w = codes.shape
    rows = ["".join(visual_token(int(c)) for c in row) for row in codes]
    return (tok.boi_token + f"{h}*{w}" + tok.img_token + tok.eol_token.join(rows)
            + tok.eol_token + tok.eof_token + tok.eoi_token)


def test_generation_size():
    assert calculate_generate_size("1:1", 518400, 8) == (90, 90)
    assert calculate_generate_size("16:9", 518400, 8) == (68, 120)
    assert calculate_generate_size("9:16", 518400, 8) == (120, 68)
    assert calculate_generate_size("4:3", 518400, 8) == (78, 104)
    # Python's round is half to even: r = 5, 5/2 = 2.5 -> 2
    assert calculate_generate_size("1:1", 25, 2) == (2, 2)
    assert parse_ratio(" 16 : 9 ") == (16, 9)
    assert Emu3Processor.num_generated_image_tokens(90, 90) == 8193


def test_mode_g_layout(proc, parts):
    tok = parts["tok"]
    prompt = "a red circle. masterpiece, film grained, best quality."
    out = proc(prompt, mode="G", ratio="16:9", image_area=64 * 64)
    f = parts["vq"].config.spatial_factor
    h, w = calculate_generate_size("16:9", 64 * 64, f)
    assert out["image_size"].tolist() == [[h, w]] and f == 2
    expected = [tok.bos_id] + tok.encode(prompt) + [tok.boi_id] + tok.encode(f"{h}*{w}") + [tok.img_id]
    assert out["input_ids"].dtype == np.int32 and out["input_ids"].shape == (1, len(expected))
    assert out["input_ids"][0].tolist() == expected
    assert out["attention_mask"].tolist() == [[1] * len(expected)]
    # the original builds a string and tokenises it in one go: same ids
    original = tok.bos_token + prompt + tok.boi_token + f"{h}*{w}" + tok.img_token
    assert tok.encode(original) == expected
    # default area of the processor
    assert proc("x", mode="G")["image_size"].tolist() == [list(calculate_generate_size("1:1", 256, f))]


def test_mode_u_layout_from_codes(proc, parts):
    tok = parts["tok"]
    codes = np.random.default_rng(0).integers(0, 32, (3, 5))
    question = "What is in the picture?"
    out = proc(question, image_codes=[codes], mode="U")
    expected = [tok.bos_id] + tok.encode(SYSTEM_PROMPT) + [tok.boi_id] + tok.encode("3*5") + [tok.img_id]
    for row in codes:
        expected += [tok.first_visual_id + int(c) for c in row] + [tok.eol_id]
    expected += [tok.eof_id, tok.eoi_id] + tok.encode(question + ASSISTANT_SUFFIX)
    assert out["input_ids"][0].tolist() == expected
    assert out["image_size"].tolist() == [[3, 5]]
    # the original's string route: bos + chat template with the image string spliced in
    original = (tok.bos_token + "You are a helpful assistant. USER: " + _original_image_string(tok, codes)
                + question + ". ASSISTANT:")
    assert tok.encode(original) == expected


def test_mode_u_images_go_through_the_vq(proc, parts):
    ims = [_image(12, 16, seed=1), _image(16, 8, seed=2)]  # different sizes: encoded one by one
    out = proc(["first?", "second one?"], images=ims, mode="U")
    for i, im in enumerate(ims):
        codes = parts["vq"].encode(parts["ip"].preprocess([im])).asnumpy()[0]
        assert out["image_size"][i].tolist() == list(codes.shape)
        alone = proc(["first?", "second one?"][i], image_codes=[codes], mode="U")["input_ids"][0]
        row = out["input_ids"][i][out["attention_mask"][i] == 1]
        np.testing.assert_array_equal(row, alone)
    assert out["image_size"].tolist() == [[6, 8], [8, 4]]  # 12x16 and 16x8 pixels, factor 2


def test_batch_is_left_padded(proc, parts):
    tok = parts["tok"]
    texts = ["a cat", "a much longer prompt about a shiba inu running in the rain"]
    out = proc(texts, mode="G", ratio=["1:1", "16:9"])
    ids, mask = out["input_ids"], out["attention_mask"]
    singles = [proc(t, mode="G", ratio=r)["input_ids"][0] for t, r in zip(texts, ["1:1", "16:9"])]
    assert ids.shape == (2, max(len(s) for s in singles))
    for row, m, single in zip(ids, mask, singles):
        n_pad = ids.shape[1] - len(single)
        assert row[:n_pad].tolist() == [tok.pad_id] * n_pad
        assert m.tolist() == [0] * n_pad + [1] * len(single)
        np.testing.assert_array_equal(row[n_pad:], single)
    assert mask[0].sum() < mask[1].sum() and mask[1].all()
    assert out["image_size"].tolist() == [list(proc.generation_size("1:1")), list(proc.generation_size("16:9"))]

    right = proc(texts, mode="G", ratio=["1:1", "16:9"], padding_side="right")
    n = len(singles[0])
    np.testing.assert_array_equal(right["input_ids"][0, :n], singles[0])
    assert right["attention_mask"][0].tolist() == [1] * n + [0] * (ids.shape[1] - n)

    padded, pmask = pad_batch([[5, 6], [7]], pad_id=0)
    assert padded.tolist() == [[5, 6], [0, 7]] and pmask.tolist() == [[1, 1], [0, 1]]


def test_decode_image_block_to_pil(proc, parts):
    tok, vq, ip = parts["tok"], parts["vq"], parts["ip"]
    codes = np.random.default_rng(3).integers(0, 32, (4, 6))
    ids = np.concatenate([tok.encode("before "), proc.image_block_ids(codes), tok.encode(" after")])
    out = proc.decode(ids)
    assert len(out) == 3 and out[0] == "before " and out[2] == " after"
    image = out[1]
    f = vq.config.spatial_factor
    assert isinstance(image, Image.Image) and image.size == (6 * f, 4 * f)  # (width, height)
    direct = ip.postprocess(vq.decode(codes[None].astype(np.int32)))[0]
    np.testing.assert_array_equal(np.asarray(image), np.asarray(direct))

    kinds = [k for k, _ in proc.split_blocks(ids)]
    assert kinds == ["text", "image", "text"]
    np.testing.assert_array_equal(proc.split_blocks(ids)[1][1], codes)
    text_ids, _ = pad_batch([tok.encode("one two three"), tok.encode("four")], tok.pad_id)
    assert proc.batch_decode(text_ids, skip_special_tokens=True) == [["one two three"], ["four"]]
    assert proc.batch_decode(text_ids)[1][0].startswith("<|endoftext|>")


def test_image_block_round_trip(proc, parts):
    tok = parts["tok"]
    codes = np.arange(12).reshape(3, 4)
    block = proc.image_block_ids(codes)
    assert block.dtype == np.int32
    assert len(block) == len(proc.image_prefix_ids(3, 4)) + Emu3Processor.num_generated_image_tokens(3, 4) - 1
    np.testing.assert_array_equal(proc.parse_image_block(block.tolist()), codes)
    # a generated sequence: mode-G prompt + rows + eof + eoi + eos
    prompt = proc("a tree", mode="G", ratio="4:3", image_area=8 * 6 * 4)["input_ids"][0].tolist()
    h, w = proc.generation_size("4:3", 8 * 6 * 4)
    generated = np.random.default_rng(4).integers(0, 32, (h, w))
    tail = proc.image_block_ids(generated).tolist()[len(proc.image_prefix_ids(h, w)):] + [tok.eos_id]
    assert len(tail) == Emu3Processor.num_generated_image_tokens(h, w)
    parts_ = proc.split_blocks(prompt + tail)
    np.testing.assert_array_equal(parts_[1][1], generated)


def test_from_pretrained(parts, tmp_path):
    import json
    import shutil

    lm_dir = tmp_path / "lm"
    shutil.copytree(parts["root"] / "tok", lm_dir)
    (lm_dir / "config.json").write_text(json.dumps({"image_area": 48 * 48, "vocab_size": len(parts["tok"])}))
    text_only = Emu3Processor.from_pretrained(lm_dir)
    assert text_only.vq_model is None and text_only.image_area == 48 * 48
    assert text_only("x", mode="G")["image_size"].tolist() == [[6, 6]]  # no VQ: factor 8 of the default processor
    full = Emu3Processor.from_pretrained(lm_dir, parts["root"] / "vq", jit=False)
    assert full.spatial_factor == 2 and full.image_area == 48 * 48
    assert full("x", mode="G")["image_size"].tolist() == [[24, 24]]
    (lm_dir / "config.json").write_text(json.dumps({"text_config": {"image_area": 16 * 16}}))
    assert Emu3Processor.from_pretrained(lm_dir).image_area == 16 * 16


# ---- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", ["16/9", "a:b", "0:1", "", "1:2:3", "1.5:1"])
def test_bad_ratio(proc, ratio):
    with pytest.raises(ValueError, match="ratio"):
        proc("x", mode="G", ratio=ratio)


def test_block_with_wrong_row_length(proc, parts):
    tok = parts["tok"]
    block = proc.image_block_ids(np.zeros((3, 4), dtype=np.int64)).tolist()
    second_row = block.index(tok.eol_id) + 1
    short = block[:second_row] + block[second_row + 1:]  # row 1 loses a token
    with pytest.raises(ValueError, match="row 1 has 3 visual tokens, expected 4"):
        proc.decode(short)
    with pytest.raises(ValueError, match="no end token"):
        proc.decode(block[:-1])
    with pytest.raises(ValueError, match="not a visual token"):
        proc.decode(block[:second_row] + [tok.encode("a")[0]] + block[second_row + 1:])
    fewer_rows = block[:second_row] + block[-2:]  # one row, but the size text says 3*4
    with pytest.raises(ValueError, match="1 rows"):
        proc.decode(fewer_rows)
    no_eof = block[:-2] + [tok.eoi_id]
    with pytest.raises(ValueError, match="does not end with"):
        proc.decode(no_eof)


def test_other_errors(proc, parts):
    with pytest.raises(ValueError, match="mode"):
        proc("x", mode="X")
    with pytest.raises(ValueError, match="takes no images"):
        proc("x", images=[_image(8, 8)], mode="G")
    with pytest.raises(ValueError, match="one per text"):
        proc(["a", "b"], image_codes=[np.zeros((2, 2), int)], mode="U")
    with pytest.raises(ValueError, match="exactly one of"):
        proc("a", mode="U")
    with pytest.raises(ValueError, match="2 ratios given for 1 texts"):
        proc("a", mode="G", ratio=["1:1", "1:1"])
    n = proc("a prompt", mode="G")["input_ids"].shape[1]
    assert proc("a prompt", mode="G", max_len=n)["input_ids"].shape[1] == n
    with pytest.raises(ValueError, match=f"prompt 0 has {n} tokens, more than max_len={n - 1}"):
        proc("a prompt", mode="G", max_len=n - 1)
    with pytest.raises(ValueError, match="padding_side"):
        proc("a", mode="G", padding_side="middle")
    with pytest.raises(ValueError, match="out of range"):
        proc("a", image_codes=[np.full((2, 2), 64)], mode="U")
    text_only = Emu3Processor(None, None, parts["tok"])
    with pytest.raises(ValueError, match="needs an image processor and a VQ model"):
        text_only.decode(proc.image_block_ids(np.zeros((2, 2), int)))
    small = Emu3Tokenizer.from_pretrained(build_tiktoken_tokenizer(parts["root"] / "small", num_visual_tokens=8))
    with pytest.raises(ValueError, match="codebook has 32 codes"):
        Emu3Processor(parts["ip"], parts["vq"], small)


# ---- against transformers' Emu3Processor on the -hf tokenizer format -----------------------------

@pytest.fixture(scope="module")
def hf_parts(parts):
    transformers = pytest.importorskip("transformers")
    d = build_hf_tokenizer(parts["root"] / "hf", num_visual_tokens=64, ranks=learn_bpe_ranks())
    ref_tok = transformers.AutoTokenizer.from_pretrained(str(d))
    ref_ip = transformers.Emu3ImageProcessor(min_pixels=8 * 8, max_pixels=32 * 32)
    ref = transformers.Emu3Processor(ref_ip, ref_tok)
    ours = Emu3Processor(None, None, Emu3Tokenizer.from_pretrained(d))  # transformers' factor is fixed at 8
    return ref, ours


@pytest.mark.parity
def test_mode_g_matches_transformers(hf_parts):
    ref, ours = hf_parts
    texts = ["a red circle", "a shiba inu running under the rain, 720*720, masterpiece."]
    for ratio, area in [("1:1", 518400), ("16:9", 518400), ("4:3", 64 * 64)]:
        expected = ref(text=texts, return_for_image_generation=True, ratio=ratio, image_area=area,
                       padding=True, return_tensors="np")
        got = ours(texts, mode="G", ratio=ratio, image_area=area)
        np.testing.assert_array_equal(got["input_ids"], expected["input_ids"])
        np.testing.assert_array_equal(got["attention_mask"], expected["attention_mask"])
        assert got["image_size"].tolist() == [list(s) for s in expected["image_sizes"]]


@pytest.mark.parity
def test_mode_u_matches_transformers_up_to_placeholders(hf_parts):
    """transformers lays out the same image block but with `<image>` placeholders (its model
    swaps in the visual tokens and the eol column); its chat template differs from the
    original's ("... USER: <image>question ASSISTANT:" has no "." before ASSISTANT), so the
    original's template text is passed to it here directly."""
    ref, ours = hf_parts
    tok = ours.tokenizer
    question = "What is this?"
    image = _image(16, 24, seed=5)  # transformers: 16x24 pixels -> 2x3 tokens
    expected = ref(images=[image], text=[SYSTEM_PROMPT + "<image>" + question + ASSISTANT_SUFFIX],
                   return_tensors="np")["input_ids"][0]
    codes = np.random.default_rng(6).integers(0, 64, (2, 3))
    got = ours(question, image_codes=[codes], mode="U")["input_ids"][0].copy()
    placeholder = tok.token_to_id("<image>")
    got[tok.is_visual(got) | (got == tok.eol_id)] = placeholder
    np.testing.assert_array_equal(got, expected)
