"""The default Emu3 model: checkpoints of a small Emu3 trained with this project's packages.

A vision tokenizer and a language model trained from scratch by `tools/shapes/recipe.py` (the
vision tokenizer with `emu3 train vq`, the LM with `emu3 train sft` on a mixture of
text-to-image, VQA and video continuation) on the shapes world of `tools/shapes`: circles,
squares and triangles in red, green, blue, yellow and white on plain backgrounds, 32x32 pixels,
and videos of one shape moving in a straight line. Both directories are ordinary checkpoints in
the original BAAI layouts (config.json + model.safetensors; the LM with its tokenizer files and
generation_config.json), loaded by `Emu3VQModel.from_pretrained`,
`Emu3ForCausalLM.from_pretrained` and `Emu3Pipeline.from_pretrained` like the real ones.

Version 0.1.2 paints the asked background and the shape in the asked colour, names the
background, the shape's colour and (80% of the time) the shape, and continues a video with
frames of the scene that move the shape on in about half of the motions; the shape is drawn as
asked half the time and the position is learnt only in part (docs/shapes.md has every score).

Data only: this package imports nothing. The others find it through the `emu3.models` entry
point (`emu3_vq.defaults`), so every `emu3` command and loader uses it when no model is named.
"""

from __future__ import annotations

import json
from pathlib import Path

__version__ = "0.1.2"
__all__ = ["LM_DIR", "VQ_DIR", "model_dirs", "training_summary"]

_HERE = Path(__file__).resolve().parent
LM_DIR = _HERE / "lm"  # the language model, with its tokenizer
VQ_DIR = _HERE / "vq"  # the vision tokenizer, with its image processor's config
TRAINING = _HERE / "training.json"  # how both were trained, and what they scored


def model_dirs() -> dict[str, Path]:
    """{"lm": LM directory, "vq": vision-tokenizer directory}."""
    return {"lm": LM_DIR, "vq": VQ_DIR}


def training_summary() -> dict:
    """The recipe's record: data, settings, losses, held-out scores and times (training.json)."""
    return json.loads(TRAINING.read_text(encoding="utf-8"))
