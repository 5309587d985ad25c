"""Video continuation: given frames, predict the next ones token by token.

Only the vision tokenizer's video round trip was released (no video LM weights, no layout), so
the layout is ours, chosen to extend the image block (docs/video_layout.md):

    bos + text + boi + "{H}*{W}" + img
        + for each latent frame (4 real frames each): H rows of [W visual tokens, eol], then eof
        + eoi

An image is the one-frame case (H rows, eof, eoi), so an image model's layout is unchanged.
To continue a video the prompt holds the given latent frames (the block left open: no eoi);
the model then emits n_frames/4 latent frames, each constrained by the same table as an image
row by row (emu3_lm.blocks.video_table), then eoi and eos. All codes, given and new, are decoded
together by the vision tokenizer (its temporal convolutions are causal, so the new frames are
decoded in the context of the old ones) and the new frames are returned.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable

import numpy as np
from emu3_lm.blocks import (
    VisualIds,
    block_tokens,
    extract_codes,
    num_generated_tokens,
    prefix_ids,
    video_table,
)
from PIL import Image

from .guidance import check_scale
from .image import sampled_range
from .loop import Progress, check_context, generate
from .sampling import Sampling, check_seed


def _check_frame_count(n: int, factor: int, what: str) -> None:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1 or n % factor:
        raise ValueError(f"{what} must be a positive multiple of {factor} (the vision tokenizer turns every "
                         f"{factor} frames into one latent frame), got {n}")


def as_frames(frames) -> list:
    """The frames of a video: a list of PIL images or HxWx3 arrays, or a path (a folder of frame
    images or an animated image, read with emu3_vq.media). A string is a path, never a sequence
    of one-letter frames."""
    if isinstance(frames, (str, os.PathLike)):
        from emu3_vq.media import load_frames

        return load_frames(frames)
    if isinstance(frames, (Image.Image, np.ndarray)):
        raise TypeError("frames must be a list of frames or a path, got a single "
                         f"{'image' if isinstance(frames, Image.Image) else 'array'}")
    frames = list(frames)
    for i, frame in enumerate(frames):
        if not isinstance(frame, (Image.Image, np.ndarray)):
            raise TypeError(f"frame {i} is a {type(frame).__name__}, expected a PIL image or an array")
    return frames


def check_continuation(config, processor, frame_size: tuple[int, int], given: int, n_frames: int,
                       factor: int, prompt: str = "", negative_prompt: str | None = None) -> tuple[int, int]:
    """Check a continuation before any frame is encoded: both frame counts, and that the prompt,
    the given frames and the new ones fit the model's context. frame_size: (width, height) of the
    input frames in pixels; factor: frames per latent frame (the VQ's temporal_downsample_factor).
    Returns the latent frame size (h, w) in tokens. Needs no weights: `emu3 generate
    video-continue` runs it before loading the models."""
    _check_frame_count(given, factor, "the number of input frames")
    _check_frame_count(n_frames, factor, "n_frames")
    height, width = processor.image_processor.size_for(frame_size[1], frame_size[0])
    h, w = height // processor.spatial_factor, width // processor.spatial_factor
    tok = processor.tokenizer
    texts = [prompt] if negative_prompt is None else [prompt, negative_prompt]
    prompt_tokens = (1 + max(len(tok.encode(t)) for t in texts) + len(prefix_ids(h, w, tok))
                     + num_generated_tokens(h, w, given // factor) - 2)  # the given frames, no eoi/eos
    check_context(config, prompt_tokens, num_generated_tokens(h, w, n_frames // factor),
                  hint=f"{given} + {n_frames} frames of {h}x{w} tokens per {factor} frames are too long: "
                       f"use fewer or smaller frames")
    return h, w


def video_prompt_ids(processor, codes: np.ndarray, text: str = "") -> list[int]:
    """bos + text + boi + "{H}*{W}" + img + the latent frames of `codes` [t, H, W], block left open."""
    tok = processor.tokenizer
    _, h, w = codes.shape
    return ([tok.bos_id] + tok.encode(text) + prefix_ids(h, w, tok)
            + block_tokens(codes, VisualIds.from_tokenizer(tok)).tolist())


def continue_video(model, processor, frames, n_frames: int, prompt: str = "", *, cfg_scale: float = 1.0,
                   negative_prompt: str = "", top_k: int = 2048, top_p: float = 1.0, temperature: float = 1.0,
                   seed: int | None = None, batched_cfg: bool = True,
                   progress: Callable[[Progress], None] | None = None) -> list:
    """Continue a video by `n_frames` frames; returns the new frames as PIL images, at the size of
    the input frames.

    frames: PIL images (a multiple of 4, all one size), or the path of a folder of frames or an
    animated image. n_frames: a multiple of 4. prompt: optional text before the video. Sampling
    as for images (top-k 2048; temperature 0 is greedy); cfg_scale != 1 guides with
    `negative_prompt` followed by the same frames. Every argument is checked before a frame is
    encoded, the length against the model's context too.
    """
    vq = processor.vq_model
    if vq is None:
        raise ValueError("video continuation needs a processor with a VQ model")
    factor = int(vq.config.temporal_downsample_factor)
    frames = as_frames(frames)
    cfg_scale = check_scale(cfg_scale)
    sampling = Sampling(temperature, top_k, top_p)
    check_seed(seed)
    if not frames:
        raise ValueError("no frames given")
    ids, vocab_range = sampled_range(model, processor)
    first = frames[0]
    size = first.size if isinstance(first, Image.Image) else (np.shape(first)[1], np.shape(first)[0])
    check_continuation(model.config, processor, size, len(frames), n_frames, factor, prompt,
                       negative_prompt if cfg_scale != 1.0 else None)

    pixels = processor.image_processor.preprocess_video(frames)  # [T, 3, H, W]
    codes = vq.encode(pixels[None])
    codes = (codes.asnumpy() if hasattr(codes, "asnumpy") else np.asarray(codes))[0].astype(np.int64)
    t, h, w = codes.shape
    new = n_frames // factor
    cond = [video_prompt_ids(processor, codes, prompt)]
    neg = [video_prompt_ids(processor, codes, negative_prompt)] if cfg_scale != 1.0 else None
    table = video_table(new, h, w, ids)
    tokens = generate(model, cond, negative_prompts=neg, cfg_scale=cfg_scale, batched_cfg=batched_cfg,
                      table=table, vocab_range=vocab_range, sampling=sampling,
                      seed=seed, progress=progress, eos_id=ids.eos, pad_id=ids.pad, eol_id=ids.eol)[0]
    new_codes = extract_codes(tokens, new, h, w, ids)
    all_codes = np.concatenate([codes, new_codes])
    new_frames = processor.decode_video_codes(all_codes)[t * factor:]  # 4 frames per latent frame
    # the tokenizer works at its own resolution (smart_resize); give frames the size of the input
    return [f if f.size == size else f.resize(size, Image.BICUBIC) for f in new_frames]
