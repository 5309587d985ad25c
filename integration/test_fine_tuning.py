"""The fine-tuning recipe of docs/training.md, end to end through the `emu3` command.

A folder of captioned images -> `emu3 train prepare-t2i` (the default model's vision tokenizer) ->
`emu3 train sft` on the default model (emu3-shapes) -> `emu3 generate image --model OUT/final`, which must load the
fine-tuned weights and write a picture. Also `prepare-vqa` -> `sft --task vqa` -> an answer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from emu3_decoding import demo
from emu3_vq.cli import main
from emu3_vq.weights import iter_checkpoint

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230), "white": (250, 250, 250)}


def _square(path, colour, background):
    rgb = np.full((64, 64, 3), COLOURS[background], np.uint8)
    rgb[16:48, 16:48] = COLOURS[colour]
    Image.fromarray(rgb).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """images/*.png with captions.jsonl and conversations.json beside them."""
    root = tmp_path_factory.mktemp("recipe")
    (root / "images").mkdir()
    lines, records = [], []
    for i, (colour, background) in enumerate([("red", "white"), ("blue", "white"), ("green", "blue"),
                                              ("white", "red")]):
        name = f"images/{i}.png"
        _square(root / name, colour, background)
        lines.append(json.dumps({"image": name, "text": f"a {colour} square on a {background} background"}))
        records.append({"id": f"q{i}", "image": name, "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the square?"},
            {"from": "gpt", "value": colour}]})
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    (root / "conversations.json").write_text(json.dumps(records))
    return root


def test_recipe_t2i_fine_tune_then_generate(folder, tmp_path):
    lm_dir, vq_dir = demo.default_model_dirs(quiet=True)
    data = tmp_path / "prepared"
    assert main(["train", "prepare-t2i", "--captions", str(folder / "captions.jsonl"), "--vq", str(vq_dir),
                 "--out", str(data), "--image-area", "1024"]) == 0
    out = tmp_path / "run"
    assert main(["train", "sft", "--data", str(data / "list" / "train.json"), "--model", str(lm_dir),
                 "--task", "t2i", "--out", str(out), "--steps", "2", "--batch-size", "2",
                 "--max-length", "96", "--lr", "1e-3", "--warmup-steps", "0"]) == 0
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))
    before = dict(iter_checkpoint(lm_dir))
    after = dict(iter_checkpoint(out / "final"))
    assert any(not np.array_equal(before[k], after[k]) for k in before)  # the weights were trained
    image = tmp_path / "generated.png"
    assert main(["generate", "image", "a red square on a white background", "--model", str(out / "final"),
                 "--vq", str(vq_dir), "--area", "1024", "--seed", "0", "--out", str(image)]) == 0
    assert Image.open(image).size == (32, 32)


def test_recipe_vqa_fine_tune_then_answer(folder, tmp_path, capsys):
    lm_dir, vq_dir = demo.default_model_dirs(quiet=True)
    data = tmp_path / "prepared"
    assert main(["train", "prepare-vqa", "--conversations", str(folder / "conversations.json"),
                 "--image-root", str(folder), "--vq", str(vq_dir), "--out", str(data),
                 "--image-area", "1024"]) == 0
    out = tmp_path / "run"
    assert main(["train", "sft", "--data", str(data / "list" / "train.json"), "--model", str(lm_dir),
                 "--task", "vqa", "--out", str(out), "--steps", "2", "--batch-size", "2",
                 "--max-length", "128", "--lr", "1e-3", "--warmup-steps", "0"]) == 0
    capsys.readouterr()
    assert main(["generate", "answer", str(folder / "images" / "0.png"), "What colour is the square?",
                 "--model", str(out / "final"), "--vq", str(vq_dir), "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip() != ""
