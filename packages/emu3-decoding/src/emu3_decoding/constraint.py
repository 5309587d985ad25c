"""The image/video block prefix constraint, as a table known before decoding starts.

The original helper (`Emu3PrefixConstrainedLogitsHelper`) decides at every step, in Python,
which tokens are allowed, from the offset of the new token after the `img` token:
offset % (W+1) == 0 -> eol; offset == (W+1)*H + 1 -> eof; +2 -> eoi; +3 -> eos; beyond -> pad;
otherwise any visual token. All of that depends only on the offset, so the whole block is
known in advance: `table[g]` is the token forced at generated position g (g = offset - 1),
or FREE where a visual token is sampled. Forced tokens are written without computing any
logits; at FREE positions only the visual slice of the lm_head is computed and sampled.

An image is H rows of [W codes, eol], then eof, eoi, eos: H*(W+1)+3 tokens.
A video (our layout, see docs/video_layout.md) is, per latent frame, H rows of [W codes, eol]
then eof; after the last frame eoi (and eos when generating); one frame is the image case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FREE = -1  # table value: sample a visual token here


@dataclass(frozen=True)
class VisualIds:
    """Token ids of the image block (the original tokenizer's numbering by default)."""

    img: int = 151851  # <|image token|>, ends the "{H}*{W}" prefix
    boi: int = 151852  # <|image start|>
    eoi: int = 151853  # <|image end|>
    eol: int = 151846  # <|extra_200|>, ends each row
    eof: int = 151847  # <|extra_201|>, ends each frame
    eos: int = 151850  # <|extra_204|>
    pad: int = 151643  # <|endoftext|>
    bos: int = 151849  # <|extra_203|>
    visual_start: int = 151854  # <|visual token 000000|>
    num_visual: int = 32768  # codebook size

    @property
    def visual_stop(self) -> int:
        return self.visual_start + self.num_visual

    @classmethod
    def from_tokenizer(cls, tok) -> VisualIds:
        """The ids an `emu3_lm.tokenizer.Emu3Tokenizer` assigns."""
        return cls(img=tok.img_id, boi=tok.boi_id, eoi=tok.eoi_id, eol=tok.eol_id, eof=tok.eof_id,
                   eos=tok.eos_id, pad=tok.pad_id, bos=tok.bos_id, visual_start=tok.first_visual_id,
                   num_visual=tok.num_visual_tokens)

    @classmethod
    def from_config(cls, cfg) -> VisualIds:
        """The ids an `emu3_lm.config.Emu3LMConfig` records."""
        return cls(img=cfg.img_token_id, boi=cfg.boi_token_id, eoi=cfg.eoi_token_id, eol=cfg.eol_token_id,
                   eof=cfg.eof_token_id, eos=cfg.eos_token_id, pad=cfg.pad_token_id, bos=cfg.bos_token_id,
                   visual_start=cfg.first_visual_token_id, num_visual=cfg.num_visual_tokens)


def _check_size(height: int, width: int) -> None:
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"image size in tokens must be positive, got {height}x{width}")


def frame_table(height: int, width: int, ids: VisualIds) -> np.ndarray:
    """One frame: H rows of [W FREE, eol], then eof (H*(W+1)+1 entries)."""
    _check_size(height, width)
    rows = np.full((height, width + 1), FREE, dtype=np.int64)
    rows[:, width] = ids.eol
    return np.concatenate([rows.reshape(-1), [ids.eof]]).astype(np.int64)


def video_table(frames: int, height: int, width: int, ids: VisualIds, close: bool = True) -> np.ndarray:
    """`frames` latent frames; with `close`, then eoi and eos (the end of a generated block)."""
    if int(frames) < 1:
        raise ValueError(f"number of latent frames must be positive, got {frames}")
    parts = [frame_table(height, width, ids)] * frames
    if close:
        parts.append(np.array([ids.eoi, ids.eos], dtype=np.int64))
    return np.concatenate(parts)


def image_table(height: int, width: int, ids: VisualIds) -> np.ndarray:
    """The generated image block: H rows of [W FREE, eol], eof, eoi, eos (H*(W+1)+3 entries)."""
    return video_table(1, height, width, ids)


def stack_tables(tables: list[np.ndarray], pad: int) -> np.ndarray:
    """Rows of different lengths as one [B, N] table, each row continued with forced `pad`."""
    n = max(len(t) for t in tables)
    out = np.full((len(tables), n), pad, dtype=np.int64)
    for i, t in enumerate(tables):
        out[i, : len(t)] = t
    return out


def last_free(table: np.ndarray) -> int:
    """Index of the last FREE position over all rows (-1 when none): no step after it needs logits."""
    free = np.nonzero((table == FREE).any(axis=0))[0]
    return int(free[-1]) if len(free) else -1


def extract_codes(tokens, frames: int, height: int, width: int, ids: VisualIds) -> np.ndarray:
    """Check a generated block token by token and return its codes [frames, H, W].

    `tokens` starts right after the `img` token. Raises ValueError naming the first position
    that breaks the layout (a wrong structural token, or a non-visual token at a code position).
    """
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    table = video_table(frames, height, width, ids, close=False)
    if len(tokens) < len(table):
        raise ValueError(f"block too short: {len(tokens)} tokens, expected at least {len(table)}")
    tokens = tokens[: len(table)]
    forced = table != FREE
    bad = np.nonzero(forced & (tokens != table))[0]
    if len(bad):
        g = int(bad[0])
        raise ValueError(f"block layout broken at position {g}: token {tokens[g]}, expected {table[g]}")
    codes = tokens[~forced] - ids.visual_start
    bad = np.nonzero((codes < 0) | (codes >= ids.num_visual))[0]
    if len(bad):
        raise ValueError(f"non-visual token {codes[bad[0]] + ids.visual_start} at a code position")
    return codes.reshape(frames, height, width)


def block_tokens(codes: np.ndarray, ids: VisualIds) -> np.ndarray:
    """Codes [frames, H, W] (or [H, W]) as block tokens: per frame H rows of [W ids, eol], eof.

    The inverse of `extract_codes` (without the prefix and the closing eoi).
    """
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim == 2:
        codes = codes[None]
    if codes.ndim != 3:
        raise ValueError(f"codes must be [H, W] or [frames, H, W], got shape {codes.shape}")
    if codes.min() < 0 or codes.max() >= ids.num_visual:
        raise ValueError(f"codes must lie in [0, {ids.num_visual}), got {codes.min()}..{codes.max()}")
    t, h, w = codes.shape
    rows = np.full((t, h, w + 1), ids.eol, dtype=np.int64)
    rows[:, :, :w] = codes + ids.visual_start
    frames = np.concatenate([rows.reshape(t, -1), np.full((t, 1), ids.eof, dtype=np.int64)], axis=1)
    return frames.reshape(-1)
