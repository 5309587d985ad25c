"""A small random-weight vision tokenizer in the real BAAI/Emu3-VisionTokenizer layout.

`build_tiny_checkpoint` writes config.json, model.safetensors (the original key names and
shapes, BatchNorm running statistics included) and preprocessor_config.json, so that
tests and the `emu3 vq` commands run without downloading anything. The weights are
random: codes and reconstructions are not meaningful, only their shapes and the code
paths are.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from .config import Emu3VQConfig
from .processor import Emu3ImageProcessor
from .weights import atomic_write, write_checkpoint

# Processor limits small enough for CPU demos: (min_pixels, max_pixels) by preset.
_PIXEL_LIMITS = {"micro": (32 * 32, 96 * 96), "tiny": (64 * 64, 256 * 256)}
# Bump when the checkpoint written here changes, so that cached copies are rebuilt.
LAYOUT_VERSION = 2
_STAMP = ".emu3-build-stamp.json"  # what a cached build was made from


# ---- the original key table -------------------------------------------------------------

def _conv(shapes, name, out_ch, in_ch, *kernel):
    shapes[f"{name}.weight"] = (out_ch, in_ch, *kernel)
    shapes[f"{name}.bias"] = (out_ch,)


def _group_norm(shapes, name, ch):
    shapes[f"{name}.weight"] = (ch,)
    shapes[f"{name}.bias"] = (ch,)


def _norm(shapes, name, ch, zq_ch):
    """GroupNorm (encoder) or SpatialNorm (decoder, conditioned on zq_ch channels)."""
    if zq_ch is None:
        _group_norm(shapes, name, ch)
    else:
        _group_norm(shapes, f"{name}.norm_layer", ch)
        _conv(shapes, f"{name}.conv_y", ch, zq_ch, 1, 1)
        _conv(shapes, f"{name}.conv_b", ch, zq_ch, 1, 1)


def _resnet(shapes, name, in_ch, out_ch, zq_ch=None):
    _norm(shapes, f"{name}.norm1", in_ch, zq_ch)
    _conv(shapes, f"{name}.conv1", out_ch, in_ch, 3, 3)
    _norm(shapes, f"{name}.norm2", out_ch, zq_ch)
    _conv(shapes, f"{name}.conv2", out_ch, out_ch, 3, 3)
    if in_ch != out_ch:
        _conv(shapes, f"{name}.nin_shortcut", out_ch, in_ch, 1, 1)


def _attn(shapes, name, ch, zq_ch=None):
    _norm(shapes, f"{name}.norm", ch, zq_ch)
    for proj in ("q", "k", "v", "proj_out"):
        _conv(shapes, f"{name}.{proj}", ch, ch, 1, 1)


def _temporal_resnet(shapes, name, ch):
    for i in (1, 2):
        norm = f"{name}.norm{i}"  # BatchNorm3d: affine parameters and running statistics
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{norm}.{stat}"] = (ch,)
        shapes[f"{norm}.num_batches_tracked"] = ()
        _conv(shapes, f"{name}.conv{i}.conv", ch, ch, 3, 3, 3)


def original_key_shapes(config: Emu3VQConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of an original-layout VQ checkpoint for `config`: name -> shape.

    Written from the structure of BAAI's modeling_emu3visionvq.py (module tree and
    constructor arguments), independently of this package's model code.
    """
    c = config
    s: dict[str, tuple[int, ...]] = {}
    z_out = 2 * c.z_channels if c.double_z else c.z_channels
    n_levels = len(c.ch_mult)
    n_time = c.num_time_convs
    in_mult = (1, *c.ch_mult)

    _conv(s, "encoder.conv_in", c.ch, c.in_channels, 3, 3)
    block_in = c.ch
    for i in range(n_levels):
        block_in, block_out = c.ch * in_mult[i], c.ch * c.ch_mult[i]
        for j in range(c.num_res_blocks):
            _resnet(s, f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if i in c.attn_resolutions:
                _attn(s, f"encoder.down.{i}.attn.{j}", block_in)
        if i != n_levels - 1:
            _conv(s, f"encoder.down.{i}.downsample.conv", block_in, block_in, 3, 3)
    _resnet(s, "encoder.mid.block_1", block_in, block_in)
    _attn(s, "encoder.mid.attn_1", block_in)
    _resnet(s, "encoder.mid.block_2", block_in, block_in)
    _group_norm(s, "encoder.norm_out", block_in)
    _conv(s, "encoder.conv_out", z_out, block_in, 3, 3)
    for k in range(n_time):
        _conv(s, f"encoder.time_conv.{k}.conv.conv", z_out, z_out, 4, 3, 3)
    for k in range(c.num_res_blocks):
        _temporal_resnet(s, f"encoder.time_res_stack.{k}", z_out)

    zq = c.embed_dim
    block_in = c.ch * c.ch_mult[-1]
    for k in range(c.num_res_blocks):
        _temporal_resnet(s, f"decoder.time_res_stack.{k}", c.z_channels)
    for k in range(n_time):
        _conv(s, f"decoder.time_conv.{k}.conv.conv", c.z_channels, c.z_channels, 3, 3, 3)
    _conv(s, "decoder.conv_in", block_in, c.z_channels, 3, 3)
    _resnet(s, "decoder.mid.block_1", block_in, block_in, zq)
    _attn(s, "decoder.mid.attn_1", block_in, zq)
    _resnet(s, "decoder.mid.block_2", block_in, block_in, zq)
    for i in reversed(range(n_levels)):
        block_out = c.ch * c.ch_mult[i]
        for j in range(c.num_res_blocks + 1):
            _resnet(s, f"decoder.up.{i}.block.{j}", block_in, block_out, zq)
            block_in = block_out
            if i in c.attn_resolutions:
                _attn(s, f"decoder.up.{i}.attn.{j}", block_in, zq)
        if i != 0:
            _conv(s, f"decoder.up.{i}.upsample.conv", block_in, block_in, 3, 3)
    _norm(s, "decoder.norm_out", block_in, zq)
    _conv(s, "decoder.conv_out", c.out_channels, block_in, 3, 3)

    s["quantize.embedding.weight"] = (c.codebook_size, c.embed_dim)
    _conv(s, "quant_conv.conv", c.embed_dim, c.z_channels, 3, 1, 1)
    _conv(s, "post_quant_conv.conv", c.z_channels, c.embed_dim, 3, 1, 1)
    return s


# ---- random weights ---------------------------------------------------------------------

def random_state(config: Emu3VQConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random weights for every original key (float32; step counters int64)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in original_key_shapes(config).items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[name] = np.array(int(rng.integers(1, 1000)), np.int64)
        elif leaf == "running_var":
            out[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif leaf in ("running_mean", "bias"):
            out[name] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
        elif len(shape) == 1:  # norm scales
            out[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif name == "quantize.embedding.weight":
            # at the scale of the encoder's output (|z| ~ 0.03 with these weights), so that many
            # codes get used: a unit-scale codebook maps every position to one code
            out[name] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
        else:  # conv weights, scaled by fan-in to keep activations of order one
            fan_in = int(np.prod(shape[1:]))
            out[name] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return out


def build_tiny_checkpoint(directory: str | os.PathLike, preset: str = "micro", seed: int = 0) -> Path:
    """Write a random-weight checkpoint in the original layout into `directory`.

    Files: config.json, model.safetensors, preprocessor_config.json (pixel limits small
    enough for CPU). Same preset and seed give byte-identical weights. Returns the directory.
    """
    config = Emu3VQConfig.from_name(preset)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_checkpoint(directory, random_state(config, seed))
    text = json.dumps(config.to_dict("original"), indent=2) + "\n"
    atomic_write(directory / "config.json", lambda f: f.write(text.encode("utf-8")))
    min_pixels, max_pixels = _PIXEL_LIMITS.get(preset, (512 * 512, 1024 * 1024))
    Emu3ImageProcessor(spatial_factor=config.spatial_factor, min_pixels=min_pixels,
                       max_pixels=max_pixels).save_pretrained(directory)
    return directory


def cache_root() -> Path:
    """$XDG_CACHE_HOME/emu3, or ~/.cache/emu3."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "emu3"


def cached_build(name: str, stamp: dict, build: Callable[[Path], object]) -> Path:
    """`cache_root()/name`, built by `build(directory)` unless a copy with this `stamp` is there.

    Built beside the target and renamed into place, so a concurrent or interrupted build never
    leaves a half-built model where it would be used. Shared with emu3-decoding's demo LM.
    """
    target = cache_root() / name
    try:
        current = json.loads((target / _STAMP).read_text())
    except (OSError, ValueError):
        current = None
    if current != stamp:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        (tmp / _STAMP).write_text(json.dumps(stamp))
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def default_model_dir(preset: str = "micro", seed: int = 0, quiet: bool = False) -> Path:
    """The embedded demo model: built once into the user cache, then reused.

    Prints a note to stderr that it is an untrained demo model (unless `quiet`).
    """
    stamp = {"layout_version": LAYOUT_VERSION, "preset": preset, "seed": seed}
    target = cached_build(f"tiny-vq-{preset}-seed{seed}", stamp,
                          lambda d: build_tiny_checkpoint(d, preset, seed))
    if not quiet:
        print(f"emu3: note: no --model given, using the embedded demo vision tokenizer ({preset}, "
              f"untrained random weights: codes and images are not meaningful) at {target}",
              file=sys.stderr)
    return target
