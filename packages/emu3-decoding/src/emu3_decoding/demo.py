"""Model directories without a download: the default model, and random-weight LMs for tests.

- `default_model_dirs`: the default model's (LM, vision tokenizer) directories
  (`emu3_vq.defaults`: the package emu3-shapes, trained with emu3-train on coloured shapes).
- `build_demo_lm` / `random_lm_state`: an LM checkpoint with random weights, normal(0,
  initializer_range) from numpy's PCG64 with the seed, in the original BAAI layout
  (config.json + model.safetensors) with the tiny tiktoken tokenizer of `emu3_lm.tiny_assets`:
  what tests need when the behaviour under test does not depend on trained weights, and the
  starting point of training from scratch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LM_PRESET = "tiny"


def random_lm_state(config, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights for every parameter of `Emu3ForCausalLM(config)`: normal(0, initializer_range),
    norms ones; the same config and seed give the same arrays."""
    from emu3_lm.model import Emu3ForCausalLM

    shapes = Emu3ForCausalLM(config, init_weights=False).checkpoint_shapes()
    rng = np.random.default_rng(seed)
    state = {}
    for name in sorted(shapes):
        if name.endswith("norm.weight"):
            state[name] = np.ones(shapes[name], np.float32)
        else:
            state[name] = (rng.standard_normal(shapes[name]) * config.initializer_range).astype(np.float32)
    return state


def build_demo_lm(directory, seed: int = 0, preset: str = LM_PRESET) -> Path:
    """Write a random-weight LM checkpoint (original layout) and its tiny tokenizer into `directory`."""
    from emu3_lm.config import Emu3LMConfig
    from emu3_lm.tiny_assets import build_tokenizer
    from emu3_vq.weights import atomic_write, write_checkpoint

    config = Emu3LMConfig.from_name(preset)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build_tokenizer(directory, "tiktoken", num_visual_tokens=config.num_visual_tokens)
    write_checkpoint(directory, random_lm_state(config, seed))
    text = json.dumps({**config.to_dict("original"), "torch_dtype": "float32"}, indent=2) + "\n"
    atomic_write(directory / "config.json", lambda f: f.write(text.encode("utf-8")))
    return directory


def default_model_dirs(quiet: bool = False) -> tuple[Path, Path]:
    """(LM directory, vision-tokenizer directory) of the default model; a note on stderr
    unless `quiet`. `emu3_vq.defaults.NoDefaultModel` when none is installed."""
    from emu3_vq.defaults import model_dirs, note

    dirs = model_dirs()
    note(quiet)
    return dirs["lm"], dirs["vq"]
