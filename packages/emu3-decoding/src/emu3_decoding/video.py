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

from collections.abc import Callable

import numpy as np
from emu3_lm.blocks import VisualIds, block_tokens, extract_codes, prefix_ids, video_table
from PIL import Image

from .image import sampled_range
from .loop import Progress, generate
from .sampling import Sampling


def _check_frame_count(n: int, factor: int, what: str) -> None:
    if n < 1 or n % factor:
        raise ValueError(f"{what} must be a positive multiple of {factor} (the vision tokenizer turns every "
                         f"{factor} frames into one latent frame), got {n}")


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

    frames: PIL images (a multiple of 4, all one size). n_frames: a multiple of 4. prompt:
    optional text before the video. Sampling as for images (top-k 2048; temperature 0 is
    greedy); cfg_scale != 1 guides with `negative_prompt` followed by the same frames.
    """
    vq = processor.vq_model
    if vq is None:
        raise ValueError("video continuation needs a processor with a VQ model")
    factor = int(vq.config.temporal_downsample_factor)
    frames = list(frames)
    _check_frame_count(len(frames), factor, "the number of input frames")
    _check_frame_count(int(n_frames), factor, "n_frames")
    ids, vocab_range = sampled_range(model, processor)

    pixels = processor.image_processor.preprocess_video(frames)  # [T, 3, H, W]
    codes = vq.encode(pixels[None])
    codes = (codes.asnumpy() if hasattr(codes, "asnumpy") else np.asarray(codes))[0].astype(np.int64)
    t, h, w = codes.shape
    new = int(n_frames) // factor
    cond = [video_prompt_ids(processor, codes, prompt)]
    neg = [video_prompt_ids(processor, codes, negative_prompt)] if cfg_scale != 1.0 else None
    table = video_table(new, h, w, ids)
    tokens = generate(model, cond, negative_prompts=neg, cfg_scale=cfg_scale, batched_cfg=batched_cfg,
                      table=table, vocab_range=vocab_range, sampling=Sampling(temperature, top_k, top_p),
                      seed=seed, progress=progress, eos_id=ids.eos, pad_id=ids.pad, eol_id=ids.eol)[0]
    new_codes = extract_codes(tokens, new, h, w, ids)
    all_codes = np.concatenate([codes, new_codes])
    new_frames = processor.decode_video_codes(all_codes)[t * factor:]  # 4 frames per latent frame
    # the tokenizer works at its own resolution (smart_resize); give frames the size of the input
    first = frames[0]
    size = first.size if isinstance(first, Image.Image) else (np.shape(first)[1], np.shape(first)[0])
    return [f if f.size == size else f.resize(size, Image.BICUBIC) for f in new_frames]
