"""The embedded demo model: a tiny random-weight Emu3 LM with its tokenizer, and a tiny VQ.

Untrained: what it generates is noise; the pipeline (prompt layout, constraint, guidance,
sampling, VQ decode, files) is the real one. Built deterministically on first use into the
user cache ($XDG_CACHE_HOME/emu3 or ~/.cache/emu3) and reused afterwards.

- LM: `Emu3LMConfig` preset 'tiny' (2 layers, hidden 64, vocab 731, 64 visual tokens), weights
  normal(0, initializer_range) from numpy's PCG64 with the seed, in the original BAAI layout
  (config.json + model.safetensors), with the tiny tiktoken tokenizer of `emu3_lm.tiny_assets`.
- VQ: `emu3_vq.tiny` preset 'tiny' (codebook 64, spatial factor 8).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

LM_PRESET = "tiny"
VQ_PRESET = "tiny"
LAYOUT_VERSION = 1  # bump when what build_demo_lm writes changes, so cached copies are rebuilt


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


def default_model_dirs(seed: int = 0, quiet: bool = False) -> tuple[Path, Path]:
    """(LM directory, VQ directory) of the embedded demo model, built on first use."""
    from emu3_vq.tiny import cached_build, default_model_dir

    stamp = {"layout_version": LAYOUT_VERSION, "preset": LM_PRESET, "seed": seed}
    target = cached_build(f"demo-lm-{LM_PRESET}-seed{seed}", stamp, lambda d: build_demo_lm(d, seed))
    vq_dir = default_model_dir(VQ_PRESET, seed, quiet=True)
    if not quiet:
        print(f"emu3: note: no --model given, using the embedded demo model ({LM_PRESET} LM at {target}, "
              f"{VQ_PRESET} vision tokenizer at {vq_dir}): untrained random weights, the output is noise",
              file=sys.stderr)
    return target, vq_dir
