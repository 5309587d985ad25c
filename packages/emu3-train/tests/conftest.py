"""Fixtures of the data tests: the tiny tokenizer and the micro vision tokenizer, built locally."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """A tiny tiktoken-format Emu3 tokenizer with 64 visual tokens (the micro VQ has 32 codes)."""
    from emu3_lm.tiny_assets import build_tokenizer
    from emu3_lm.tokenizer import Emu3Tokenizer

    return Emu3Tokenizer.from_pretrained(build_tokenizer(tmp_path_factory.mktemp("tok") / "t", num_visual_tokens=64))


@pytest.fixture(scope="session")
def vq_dir(tmp_path_factory):
    """The micro vision tokenizer (random weights, spatial factor 2, images of 32*32..96*96 pixels)."""
    from emu3_vq.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("vq") / "micro", "micro", seed=0)


def _save_image(path, width: int, height: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def save_image():
    """save_image(path, width, height, seed=0): write a random RGB PNG, return its path."""
    return _save_image
