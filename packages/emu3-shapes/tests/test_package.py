"""emu3-shapes holds two complete checkpoints in the original layouts, registered as the
default model, with the record of how they were trained; no import of another package."""

from __future__ import annotations

import json
import struct
from importlib.metadata import entry_points

import emu3_shapes


def _safetensors_header(path) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def test_registered_as_the_default_model():
    (ep,) = [ep for ep in entry_points(group="emu3.models") if ep.name == "default"]
    assert ep.load()() == {"lm": emu3_shapes.LM_DIR, "vq": emu3_shapes.VQ_DIR}


def test_lm_checkpoint_is_complete_and_consistent():
    lm = emu3_shapes.LM_DIR
    config = json.loads((lm / "config.json").read_text())
    header = _safetensors_header(lm / "model.safetensors")
    assert header["model.embed_tokens.weight"]["shape"] == [config["vocab_size"], config["hidden_size"]]
    assert header["lm_head.weight"]["shape"] == [config["vocab_size"], config["hidden_size"]]
    layers = {k.split(".")[2] for k in header if k.startswith("model.layers.")}
    assert len(layers) == config["num_hidden_layers"]
    # the tokenizer: BPE ranks, then Emu3's special tokens, then one visual token per code
    ranks = (lm / "emu3.tiktoken").read_text().splitlines()
    visual = [t for t in (lm / "emu3_vision_tokens.txt").read_text().splitlines() if t.startswith("<|visual")]
    vq = json.loads((emu3_shapes.VQ_DIR / "config.json").read_text())
    assert len(visual) == vq["codebook_size"]
    assert config["vocab_size"] > len(ranks) + len(visual)
    generation = json.loads((lm / "generation_config.json").read_text())
    assert generation["negative_prompt"] == "" and generation["positive_prompt_suffix"] == ""


def test_vq_checkpoint_is_complete_and_consistent():
    vq = emu3_shapes.VQ_DIR
    config = json.loads((vq / "config.json").read_text())
    header = _safetensors_header(vq / "model.safetensors")
    assert header["quantize.embedding.weight"]["shape"] == [config["codebook_size"], config["embed_dim"]]
    processor = json.loads((vq / "preprocessor_config.json").read_text())
    assert processor["min_pixels"] <= 32 * 32 <= processor["max_pixels"]


def test_small_enough_to_ship():
    total = sum(p.stat().st_size for d in (emu3_shapes.LM_DIR, emu3_shapes.VQ_DIR) for p in d.iterdir())
    assert total < 30 * 2 ** 20


def test_training_record_names_scores_and_times():
    summary = emu3_shapes.training_summary()
    assert set(summary["seconds"]) == {"data", "vq", "lm-init", "prepare", "sft", "sft2"}
    assert all(v > 0 for v in summary["seconds"].values())
    assert set(summary["vqa_accuracy"]) >= {"colour", "shape", "background", "position"}
    assert summary["t2i_accuracy"]["background"] >= 0.9
    assert summary["sft"]["loss"][-1] < summary["sft"]["loss"][0] / 2
    assert summary["vq"]["psnr"][-1] > summary["vq"]["psnr"][0]
