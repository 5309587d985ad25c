"""End to end across emu3-vq, emu3-lm and emu3-decoding, on CPU here (Ascend/GPU when present).

One small Emu3 (the demo LM and the 'tiny' VQ, random weights) is written in the original
BAAI layout (separate LM and vision-tokenizer directories, tiktoken tokenizer) and in the
combined `-hf` layout (one directory: text_model.* and vqmodel.* keys in shards, tokenizer.json,
a config.json with text_config, vq_config and vocabulary_map). transformers must read the
combined directory as the real Emu3ForConditionalGeneration, and the whole pipeline must give
the same results from either layout and agree with transformers where it can be compared.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import mindspore as ms

from emu3_decoding import demo
from emu3_decoding.image import generate_image
from emu3_decoding.loop import generate
from emu3_decoding.video import continue_video
from emu3_decoding.vqa import answer
from emu3_lm.model import Emu3ForCausalLM
from emu3_lm.processor import Emu3Processor
from emu3_lm.tiny_assets import build_hf_tokenizer
from emu3_lm.tokenizer import Emu3Tokenizer, load_tiktoken_ranks
from emu3_vq.model import Emu3VQModel
from emu3_vq.processor import Emu3ImageProcessor
from emu3_vq.tiny import build_tiny_checkpoint
from emu3_vq.weights import iter_checkpoint, write_checkpoint


def _picture(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    rgb = (rgb + rng.integers(0, 32, rgb.shape)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb)


def _load(lm_dir, vq_dir, tokenizer_dir=None):
    model = Emu3ForCausalLM.from_pretrained(lm_dir, dtype=ms.float32)
    vq = Emu3VQModel.from_pretrained(vq_dir)
    tokenizer = Emu3Tokenizer.from_pretrained(tokenizer_dir or lm_dir)
    processor = Emu3Processor(Emu3ImageProcessor.from_pretrained(vq_dir), vq, tokenizer,
                              image_area=model.config.image_area)
    return model, processor


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """The original layout: an LM directory and a vision-tokenizer directory."""
    root = tmp_path_factory.mktemp("original")
    lm_dir = demo.build_demo_lm(root / "Emu3-Gen", seed=1)
    vq_dir = build_tiny_checkpoint(root / "Emu3-VisionTokenizer", preset="tiny", seed=2)
    return lm_dir, vq_dir


@pytest.fixture(scope="module")
def combined_hf(original, tmp_path_factory):
    """The same weights written as one combined -hf checkpoint, through our save_pretrained."""
    lm_dir, vq_dir = original
    model, processor = _load(lm_dir, vq_dir)
    root = tmp_path_factory.mktemp("hf")
    model.save_pretrained(root / "lm", layout="hf")
    processor.vq_model.save_pretrained(root / "vq", layout="hf")
    out = root / "Emu3-Gen-hf"
    tensors = dict(iter_checkpoint(root / "lm"))
    assert tensors and all("text_model." in k or k == "lm_head.weight" for k in tensors)
    # the VQ's -hf layout is a standalone Emu3VQVAE; inside Emu3 it sits under vqmodel.
    vq_prefix = "model.vqmodel." if any(k.startswith("model.text_model.") for k in tensors) else "vqmodel."
    tensors.update((vq_prefix + k, v) for k, v in iter_checkpoint(root / "vq"))
    write_checkpoint(out, {k: np.array(v) for k, v in tensors.items()}, max_shard_bytes=200_000)
    assert (out / "model.safetensors.index.json").is_file()  # sharded, as the real one

    lm_config = json.loads((root / "lm" / "config.json").read_text())
    vq_config = json.loads((root / "vq" / "config.json").read_text())
    build_hf_tokenizer(out, num_visual_tokens=model.config.num_visual_tokens,
                       ranks=load_tiktoken_ranks(lm_dir / "emu3.tiktoken"))
    tokenizer = Emu3Tokenizer.from_pretrained(out)
    config = {
        "architectures": ["Emu3ForConditionalGeneration"],
        "model_type": "emu3",
        "text_config": lm_config.get("text_config", lm_config),
        "vq_config": vq_config.get("vq_config", vq_config),
        "vocabulary_map": {tokenizer.id_to_token(i): i for i in range(len(tokenizer))},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copy(vq_dir / "preprocessor_config.json", out / "preprocessor_config.json")
    return out


def test_transformers_reads_the_combined_checkpoint(combined_hf):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf, info = transformers.Emu3ForConditionalGeneration.from_pretrained(
        combined_hf, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info


def test_vqa_and_codes_match_transformers(combined_hf):
    """Our image processor + VQ + Emu3 processor + greedy decode against transformers' model
    loaded from the very same combined directory."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model, processor = _load(combined_hf, combined_hf)
    hf = transformers.Emu3ForConditionalGeneration.from_pretrained(combined_hf, dtype=torch.float32).eval()

    image = _picture(40, 32)
    pixels = processor.image_processor.preprocess([image])
    codes = processor.encode_images([image])[0]
    assert len(np.unique(codes)) > 4  # a varied image block, not one code repeated
    with torch.no_grad():  # transformers maps codes to ids through the config's vocabulary_map
        hf_ids = hf.model.get_image_tokens(torch.from_numpy(pixels), torch.tensor([pixels.shape[-2:]]))
    tok = processor.tokenizer
    rows = np.concatenate([tok.visual_token_id(codes), np.full((codes.shape[0], 1), tok.eol_id)], axis=1)
    np.testing.assert_array_equal(rows.reshape(-1), hf_ids.numpy())  # H rows of [W codes, eol]

    prompt = processor.understanding_prompt_ids("what is this?", codes)
    ours = generate(model, [prompt], max_new_tokens=12, eos_id=tok.eos_id, pad_id=tok.pad_id)[0]
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          do_sample=False, max_new_tokens=12, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    ref = ref[0, len(prompt):].numpy()
    np.testing.assert_array_equal(ours[: len(ref)], ref)


@pytest.mark.slow  # ~65 s; the default model saves and reloads in both layouts by default
def test_both_layouts_give_the_same_pipeline(original, combined_hf):
    """Text-to-image with a seed, VQA and video continuation: identical from either layout
    (the LM and VQ weights of the -hf directory; tokenizer from the original for equal ids)."""
    lm_dir, vq_dir = original
    a_model, a_proc = _load(lm_dir, vq_dir)
    b_model, b_proc = _load(combined_hf, combined_hf, tokenizer_dir=lm_dir)

    kw = dict(ratio="4:3", image_area=64 * 64, cfg_scale=3.0, top_k=16, seed=7)
    img_a = generate_image(a_model, a_proc, "a red circle", **kw)[0]
    img_b = generate_image(b_model, b_proc, "a red circle", **kw)[0]
    assert img_a.size == img_b.size and img_a.size[0] > img_a.size[1]  # 4:3 is wider than tall
    np.testing.assert_array_equal(np.asarray(img_a), np.asarray(img_b))
    # another seed gives another image: the seed is what made them equal
    other = generate_image(a_model, a_proc, "a red circle", **{**kw, "seed": 8})[0]
    assert not np.array_equal(np.asarray(other), np.asarray(img_a))

    text_a = answer(a_model, a_proc, _picture(32, 32, 1), "what is this?", max_new_tokens=8)
    text_b = answer(b_model, b_proc, _picture(32, 32, 1), "what is this?", max_new_tokens=8)
    assert isinstance(text_a, str) and text_a == text_b

    frames = [_picture(32, 32, s) for s in range(4)]
    new_a = continue_video(a_model, a_proc, frames, 4, seed=3)
    new_b = continue_video(b_model, b_proc, frames, 4, seed=3)
    assert len(new_a) == 4 and all(f.size == (32, 32) for f in new_a)
    for fa, fb in zip(new_a, new_b):
        np.testing.assert_array_equal(np.asarray(fa), np.asarray(fb))
