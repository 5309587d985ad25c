"""The processor reads back the video blocks that continue_video writes: the prompt of
video_prompt_ids (given latent frames, block left open), the generated frames, eoi, eos.

Here rather than in emu3-lm's tests because emu3-lm must not import emu3-decoding. Tiny
tiktoken tokenizer (64 visual tokens) and the "micro" random-weight vision tokenizer (32 codes,
spatial factor 2, 4 frames per latent frame).
"""

import dataclasses

import numpy as np
import pytest
from emu3_decoding.video import video_prompt_ids
from emu3_lm.blocks import FREE, VisualIds, block_tokens, video_table
from emu3_lm.processor import Emu3Processor
from emu3_lm.tiny_assets import build_tiktoken_tokenizer
from emu3_lm.tokenizer import Emu3Tokenizer
from emu3_vq.model import Emu3VQModel
from emu3_vq.processor import Emu3ImageProcessor
from emu3_vq.tiny import build_tiny_checkpoint
from PIL import Image

H, W = 3, 4


@pytest.fixture(scope="module")
def proc(tmp_path_factory):
    root = tmp_path_factory.mktemp("video-blocks")
    tok = Emu3Tokenizer.from_pretrained(build_tiktoken_tokenizer(root / "tok", num_visual_tokens=64))
    vq_dir = build_tiny_checkpoint(root / "vq", preset="micro")
    vq = Emu3VQModel.from_pretrained(vq_dir, jit=False)
    ip = dataclasses.replace(Emu3ImageProcessor.from_pretrained(vq_dir), min_pixels=8 * 8, max_pixels=16 * 16)
    return Emu3Processor(ip, vq, tok, image_area=16 * 16)


def _continued(proc, given: np.ndarray, new: np.ndarray, text: str = "a clip") -> list[int]:
    """What continue_video's generate() sees and returns, joined: prompt + new frames + eoi + eos."""
    ids = VisualIds.from_tokenizer(proc.tokenizer)
    prompt = video_prompt_ids(proc, given, text)
    generated = block_tokens(new, ids).tolist() + [ids.eoi, ids.eos]
    table = video_table(len(new), H, W, ids)  # the constraint continue_video decodes under
    assert len(generated) == len(table)
    forced = table != FREE
    assert np.array_equal(np.array(generated)[forced], table[forced])
    return prompt + generated


def test_split_and_parse_a_continued_video(proc):
    tok = proc.tokenizer
    rng = np.random.default_rng(0)
    given, new = rng.integers(0, 32, (2, H, W)), rng.integers(0, 32, (1, H, W))
    seq = _continued(proc, given, new)
    parts = proc.split_blocks(np.array(seq))
    assert [kind for kind, _ in parts] == ["text", "video", "text"]
    assert parts[0][1] == [tok.bos_id] + tok.encode("a clip")
    assert parts[2][1] == [tok.eos_id]
    video = parts[1][1]
    assert video.shape == (3, H, W)
    np.testing.assert_array_equal(video, np.concatenate([given, new]))

    start, end = seq.index(tok.boi_id), seq.index(tok.eoi_id)
    np.testing.assert_array_equal(proc.parse_image_block(seq[start:end + 1]), video)
    # the block is what image_block_ids writes for the same codes
    assert seq[start:end + 1] == proc.image_block_ids(video).tolist()

    # a one-frame "video" is an image: [H, W], kind "image"
    single = video_prompt_ids(proc, given[:1]) + [tok.eoi_id]
    kinds = proc.split_blocks(single)
    assert [k for k, _ in kinds] == ["text", "image"]
    np.testing.assert_array_equal(kinds[1][1], given[0])


def test_errors_in_a_continued_video_name_the_position(proc):
    tok = proc.tokenizer
    rng = np.random.default_rng(1)
    seq = _continued(proc, rng.integers(0, 32, (2, H, W)), rng.integers(0, 32, (2, H, W)))
    frame = H * (W + 1) + 1
    first_code = seq.index(tok.img_id) + 1
    p = first_code + 2 * frame + W  # the eol closing row 0 of the first generated frame
    assert seq[p] == tok.eol_id
    bad = seq[:p] + [tok.first_visual_id] + seq[p + 1:]
    with pytest.raises(ValueError, match=f"row 0 has more than {W} visual tokens \\(frame 2, .*position {p}\\)"):
        proc.split_blocks(bad)
    with pytest.raises(ValueError, match="no end token"):
        proc.split_blocks(seq[: seq.index(tok.eoi_id)])


def test_decode_turns_a_video_block_into_frames(proc):
    rng = np.random.default_rng(2)
    given, new = rng.integers(0, 32, (1, H, W)), rng.integers(0, 32, (1, H, W))
    out = proc.decode(_continued(proc, given, new), skip_special_tokens=True)
    assert len(out) == 2 and out[0] == "a clip"
    frames = out[1]
    factor = proc.vq_model.config.temporal_downsample_factor
    assert isinstance(frames, list) and len(frames) == 2 * factor
    f = proc.spatial_factor
    assert all(isinstance(im, Image.Image) and im.size == (W * f, H * f) for im in frames)
    codes = np.concatenate([given, new]).astype(np.int32)
    direct = proc.image_processor.postprocess(proc.vq_model.decode(codes[None]))
    for got, want in zip(frames, direct):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
