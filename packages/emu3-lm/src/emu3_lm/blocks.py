"""The Emu3 image/video block grammar and the special-token ids, written once.

Everything that builds, constrains, checks or parses an image block uses this module: the
processor (prompts, ``split_blocks``, ``decode``), the decoding constraint of emu3-decoding
(``image_table``, ``video_table``, ``extract_codes``), and training labels (``label_mask``).

An image block, for an image of H x W tokens (H, W in the "{H}*{W}" text, ordinary BPE)::

    boi  "H*W"  img                                    prefix_ids(H, W, tok)
         v v v ... v  eol       row 0:  W visual tokens, then eol
         v v v ... v  eol       row 1
         ...
         v v v ... v  eol       row H-1
         eof                    end of the frame
    eoi                         end of the block

A video (our layout, docs/video_layout.md) repeats the frame, one per latent frame (4 real
frames each), all of the same H x W; "H*W" gives one frame's size, the number of frames is not
written (a frame ends at its eof, the video at eoi)::

    boi "H*W" img  [H rows of (W visual, eol)] eof  [H rows of (W visual, eol)] eof  ...  eoi

An image is exactly the one-frame case. When generating, the model emits everything after
``img`` and then ``eos``: T * (H*(W+1) + 1) + 2 tokens (H*(W+1) + 3 for an image; 8193 for 90x90).

Tables: the original helper (``Emu3PrefixConstrainedLogitsHelper``) decides every step, in
Python, which tokens are allowed from the offset after ``img``: offset % (W+1) == 0 -> eol;
offset == (W+1)*H + 1 -> eof; +2 -> eoi; +3 -> eos; beyond -> pad; otherwise any visual token.
That depends only on the offset, so the block is known in advance: ``table[g]`` is the token
forced at generated position g (g = offset - 1), or ``FREE`` where a visual token is sampled.

Token ids (the numbering rule, ``emu3_token_ids``): the special tokens follow the ordinary
vocabulary of n tokens, in the order of ``emu3_lm.tokenizer`` (``<|endoftext|>``,
``<|im_start|>``, ``<|im_end|>``, ``<|extra_0|>`` .. ``<|extra_204|>``, ``<|image token|>``,
``<|image start|>``, ``<|image end|>``), then the visual tokens, contiguous::

    n        pad  <|endoftext|>          n+206  bos  <|extra_203|>
    n+203    eol  <|extra_200|>          n+207  eos  <|extra_204|>
    n+204    eof  <|extra_201|>          n+208  img  <|image token|>
                                         n+209  boi  <|image start|>
                                         n+210  eoi  <|image end|>
    n+211 + k    <|visual token k|>, k < num_visual

The released tokenizer has n = 151643 (``RELEASED``): eol 151846, bos 151849, img 151851,
first visual 151854, vocab 184622.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .tokenizer import IMAGE_TOKENS, NAMED_TOKENS, TEXT_SPECIAL_TOKENS

FREE = -1  # table value: sample a visual token here
_SIZE_RE = re.compile(r"(\d+)\*(\d+)")


# ---- token ids ------------------------------------------------------------------------------

def emu3_token_ids(text_vocab_size: int, num_visual_tokens: int) -> dict:
    """Special/visual token ids by Emu3's numbering rule, as Emu3LMConfig field names.

    The ids follow the ordinary vocabulary in the tokenizer's order of special tokens (the
    same list the tokenizer numbers), then the visual tokens: pad n, eol n+203, eof n+204,
    bos n+206, eos n+207, img n+208, boi n+209, eoi n+210, first visual n+211.
    """
    n = int(text_vocab_size)
    order = {token: n + i for i, token in enumerate(TEXT_SPECIAL_TOKENS + IMAGE_TOKENS)}
    ids = {f"{name}_token_id": order[default] for name, (_, default) in NAMED_TOKENS.items()}
    first = n + len(order)
    return dict(ids, first_visual_token_id=first, num_visual_tokens=int(num_visual_tokens),
                vocab_size=first + int(num_visual_tokens))


RELEASED = emu3_token_ids(151643, 32768)  # BAAI/Emu3-{Gen,Chat,Stage1}


@dataclass(frozen=True)
class VisualIds:
    """Token ids of the image block (the released tokenizer's numbering by default)."""

    img: int = RELEASED["img_token_id"]  # <|image token|>, ends the "{H}*{W}" prefix
    boi: int = RELEASED["boi_token_id"]  # <|image start|>
    eoi: int = RELEASED["eoi_token_id"]  # <|image end|>
    eol: int = RELEASED["eol_token_id"]  # <|extra_200|>, ends each row
    eof: int = RELEASED["eof_token_id"]  # <|extra_201|>, ends each frame
    eos: int = RELEASED["eos_token_id"]  # <|extra_204|>
    pad: int = RELEASED["pad_token_id"]  # <|endoftext|>
    bos: int = RELEASED["bos_token_id"]  # <|extra_203|>
    visual_start: int = RELEASED["first_visual_token_id"]  # <|visual token 000000|>
    num_visual: int = RELEASED["num_visual_tokens"]  # codebook size

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


# ---- tables (the block known in advance) --------------------------------------------------------

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


def num_generated_tokens(height: int, width: int, frames: int = 1) -> int:
    """Tokens that follow a generation prompt's ``img``: per frame H rows of W+1, then eof;
    then eoi, eos. An image (one frame): H*(W+1)+3."""
    _check_size(height, width)
    if int(frames) < 1:
        raise ValueError(f"number of latent frames must be positive, got {frames}")
    return int(frames) * (int(height) * (int(width) + 1) + 1) + 2


# ---- codes <-> block tokens ----------------------------------------------------------------------

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


def block_tokens(codes, ids: VisualIds) -> np.ndarray:
    """Codes [frames, H, W] (or [H, W]) as block tokens: per frame H rows of [W ids, eol], eof.

    The inverse of `extract_codes` (without the prefix and the closing eoi).
    """
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iu":
        raise TypeError(f"visual codes must be integers, got dtype {codes.dtype}")
    codes = codes.astype(np.int64)
    if codes.ndim == 2:
        codes = codes[None]
    if codes.ndim != 3 or 0 in codes.shape:
        raise ValueError(f"codes must be a non-empty [H, W] or [frames, H, W] array, got shape {codes.shape}")
    if codes.min() < 0 or codes.max() >= ids.num_visual:
        raise ValueError(f"visual code out of range [0, {ids.num_visual}): min {codes.min()}, max {codes.max()}")
    t, h, w = codes.shape
    rows = np.full((t, h, w + 1), ids.eol, dtype=np.int64)
    rows[:, :, :w] = codes + ids.visual_start
    frames = np.concatenate([rows.reshape(t, -1), np.full((t, 1), ids.eof, dtype=np.int64)], axis=1)
    return frames.reshape(-1)


def prefix_ids(height: int, width: int, tok) -> list[int]:
    """boi + "{H}*{W}" + img (`tok` an Emu3Tokenizer): what precedes the rows of a block."""
    _check_size(height, width)
    return [tok.boi_id] + tok.encode(f"{int(height)}*{int(width)}") + [tok.img_id]


def block_ids(codes, tok) -> np.ndarray:
    """Codes [H, W] (an image) or [T, H, W] (T latent frames) -> the whole block, int32:
    boi "{H}*{W}" img, per frame H rows of [W visual tokens, eol] and eof, then eoi."""
    body = block_tokens(codes, VisualIds.from_tokenizer(tok))
    h, w = np.shape(codes)[-2:]
    return np.concatenate([prefix_ids(h, w, tok), body, [tok.eoi_id]]).astype(np.int32)


# ---- parsing and labels --------------------------------------------------------------------------

def parse_block(tokens, tok, position: int = 0) -> np.ndarray:
    """A whole block (boi .. eoi, one or more frames) -> its codes [T, H, W] (int64).

    Checks the "{H}*{W}" text and every row and frame against it; a ValueError names the
    position of the first token that breaks the grammar (`position` is where the block starts
    in a longer sequence, added to every position reported).
    """
    ids = VisualIds.from_tokenizer(tok)
    block = [int(t) for t in np.asarray(tokens, dtype=np.int64).reshape(-1)]
    where = f"image block at position {position}"

    def name(p: int) -> str:
        t = block[p]
        return f"token {t} ({tok.id_to_token(t)!r}) at position {position + p}"

    if len(block) < 2 or block[0] != ids.boi or block[-1] != ids.eoi:
        raise ValueError(f"{where} must start with {tok.boi_token!r} and end with {tok.eoi_token!r}")
    if ids.img not in block:
        raise ValueError(f"{where} has no {tok.img_token!r} token")
    img = block.index(ids.img)
    size_text = tok.decode(block[1:img])
    m = _SIZE_RE.fullmatch(size_text.strip())
    if m is None or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"{where}: the size text {size_text!r} at position {position + 1} is not "
                         "'{H}*{W}' with positive H and W")
    height, width = int(m.group(1)), int(m.group(2))
    if block[-2] != ids.eof:
        raise ValueError(f"{where} does not end with {tok.eof_token!r} {tok.eoi_token!r}")

    end = len(block) - 1  # the eoi
    frames: list[list[int]] = []
    p = img + 1
    while p < end:
        f = len(frames)
        codes: list[int] = []
        for r in range(height):
            if block[p] in (ids.eof, ids.eoi):
                raise ValueError(f"{where}: frame {f} has {r} rows, but its size text says {size_text!r} "
                                 f"({name(p)})")
            for c in range(width):
                t = block[p]
                if t == ids.eol:
                    raise ValueError(f"{where}: row {r} has {c} visual tokens, expected {width} "
                                     f"(frame {f}, eol at position {position + p})")
                if not ids.visual_start <= t < ids.visual_stop:
                    raise ValueError(f"{where}: {name(p)} inside the rows is not a visual token")
                codes.append(t - ids.visual_start)
                p += 1
            if block[p] != ids.eol:
                if ids.visual_start <= block[p] < ids.visual_stop:
                    raise ValueError(f"{where}: row {r} has more than {width} visual tokens "
                                     f"(frame {f}, {name(p)})")
                raise ValueError(f"{where}: {name(p)}, expected {tok.eol_token!r} closing row {r} of frame {f}")
            p += 1
        if block[p] != ids.eof:
            if block[p] == ids.eol or ids.visual_start <= block[p] < ids.visual_stop:
                raise ValueError(f"{where}: frame {f} has more than {height} rows, but its size text says "
                                 f"{size_text!r} ({name(p)})")
            raise ValueError(f"{where}: {name(p)}, expected {tok.eof_token!r} closing frame {f}")
        p += 1
        frames.append(codes)
    return np.array(frames, dtype=np.int64).reshape(len(frames), height, width)


def label_mask(tokens, ids: VisualIds) -> np.ndarray:
    """True where a token is a visual token (visual_start <= id < visual_stop), any shape: the
    positions a text-to-image loss is taken over."""
    tokens = np.asarray(tokens)
    return (tokens >= ids.visual_start) & (tokens < ids.visual_stop)
