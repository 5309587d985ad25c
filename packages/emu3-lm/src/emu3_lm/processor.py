"""Emu3 processor: text and images to token id sequences (modes U and G), and back.

Layouts, as BAAI's ``emu3/mllm/processing_emu3.py`` builds them (a prompt string tokenised
in one go; the special tokens split it, so the ids equal the concatenation built here):

* image block: ``boi`` + "{H}*{W}" + ``img`` + H rows of [W visual tokens, ``eol``] + ``eof`` + ``eoi``
  (H, W in tokens; the size text is ordinary BPE). A video block has, per latent frame, the H
  rows and ``eof``, then ``eoi`` once. The grammar is written once, in :mod:`emu3_lm.blocks`.
* mode "U" (understanding): ``bos`` + "You are a helpful assistant. USER: " + image block
  + question + ". ASSISTANT:".
* mode "G" (generation): ``bos`` + prompt + ``boi`` + "{H}*{W}" + ``img``; the model then emits
  the H rows, ``eof``, ``eoi`` and ``eos`` (H*(W+1)+3 tokens).

Batches are padded on the left with the pad id (``<|endoftext|>``) and carry an attention mask.

With an ``-hf`` tokenizer.json the same layouts come out in that tokenizer's ids, which is what
transformers' ``Emu3Processor`` gives in mode G. transformers differs elsewhere: its mode-U
prompts come from a chat template ("You are a helpful assistant. USER: <image>question
ASSISTANT:", no "." before ASSISTANT) with ``<image>`` placeholders that its model replaces by
the visual tokens and the eol column; and its tokenizer keeps digit runs together, so "90*90"
is ["90", "*", "90"] where the original has ["9", "0", "*", "9", "0"].
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from . import blocks
from .tokenizer import Emu3Tokenizer

SYSTEM_PROMPT = "You are a helpful assistant. USER: "
ASSISTANT_SUFFIX = ". ASSISTANT:"
DEFAULT_IMAGE_AREA = 518400  # 720 x 720, Emu3-Gen's config.image_area
_RATIO_RE = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")


def parse_ratio(ratio: str) -> tuple[int, int]:
    """A "W:H" ratio string -> (w, h) positive ints."""
    m = _RATIO_RE.fullmatch(ratio) if isinstance(ratio, str) else None
    if m is None:
        raise ValueError(f"cannot parse image ratio {ratio!r}: expected 'W:H' with positive integers, e.g. '16:9'")
    w, h = int(m.group(1)), int(m.group(2))
    if w == 0 or h == 0:
        raise ValueError(f"image ratio {ratio!r} has a zero side")
    return w, h


def calculate_generate_size(ratio: str, image_area: int, spatial_factor: int) -> tuple[int, int]:
    """(H, W) in tokens of an image generated at `ratio` ("W:H") covering about `image_area`
    pixels: r = sqrt(area / (w*h)), H = round(h*r/f), W = round(w*r/f) (Python's round)."""
    w, h = parse_ratio(ratio)
    real = isinstance(image_area, numbers.Real) and not isinstance(image_area, bool)
    if not real or not math.isfinite(image_area) or image_area <= 0:
        raise ValueError(f"image_area must be a positive number of pixels, got {image_area!r}")
    r = math.sqrt(image_area / (w * h))
    th, tw = int(round(h * r / spatial_factor)), int(round(w * r / spatial_factor))
    if th < 1 or tw < 1:
        raise ValueError(f"ratio {ratio!r} with image_area {image_area} gives a {th}x{tw} token grid: "
                         "a side rounds to zero")
    return th, tw


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, padding_side: str = "left") -> tuple[np.ndarray, np.ndarray]:
    """Pad id lists to one length -> (input_ids int32 [B, L], attention_mask int32 [B, L])."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not seqs:
        raise ValueError("no sequences to pad")
    length = max(len(s) for s in seqs)
    ids = np.full((len(seqs), length), pad_id, dtype=np.int32)
    mask = np.zeros((len(seqs), length), dtype=np.int32)
    for i, s in enumerate(seqs):
        n = len(s)
        if n == 0:
            continue
        cols = slice(length - n, length) if padding_side == "left" else slice(0, n)
        ids[i, cols] = np.asarray(s, dtype=np.int32)
        mask[i, cols] = 1
    return ids, mask


def _config_image_area(path: Path) -> int:
    """``image_area`` of an LM config.json (top level, or text_config in -hf), else the default."""
    if not path.is_file():
        return DEFAULT_IMAGE_AREA
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    for scope in (config, config.get("text_config") or {}):
        if isinstance(scope.get("image_area"), int):
            return scope["image_area"]
    return DEFAULT_IMAGE_AREA


def _to_numpy(x) -> np.ndarray:
    return x.asnumpy() if hasattr(x, "asnumpy") else np.asarray(x)


class Emu3Processor:
    """Builds Emu3 prompts (modes "U" and "G") and turns generated ids back into text and images.

    Args:
        image_processor: an ``emu3_vq.processor.Emu3ImageProcessor`` (pixels in and out).
        vq_model: an ``emu3_vq`` VQ model (``encode(pixels [B,3,H,W]) -> codes [B,h,w]``,
            ``decode(codes) -> pixels``, ``config.spatial_factor``); may be None when no image
            is encoded or decoded (mode G prompts only).
        tokenizer: an :class:`Emu3Tokenizer`.
        image_area: default pixel area of generated images (Emu3-Gen: 518400).
    """

    def __init__(self, image_processor, vq_model, tokenizer: Emu3Tokenizer, image_area: int = DEFAULT_IMAGE_AREA):
        self.image_processor = image_processor
        self.vq_model = vq_model
        self.tokenizer = tokenizer
        self.image_area = image_area
        if vq_model is not None:
            self.spatial_factor = int(vq_model.config.spatial_factor)
            codebook = getattr(vq_model.config, "codebook_size", None)
            if codebook is not None and codebook > tokenizer.num_visual_tokens:
                raise ValueError(f"the VQ codebook has {codebook} codes but the tokenizer only "
                                 f"{tokenizer.num_visual_tokens} visual tokens")
        elif image_processor is not None:
            self.spatial_factor = int(image_processor.spatial_factor)
        else:
            self.spatial_factor = 8
        self._system_ids = tokenizer.encode(SYSTEM_PROMPT)

    @classmethod
    def from_pretrained(cls, tokenizer_dir=None, vq_dir=None, image_area: int | None = None, *, revision=None,
                        cache_dir=None, local_files_only: bool = False, **vq_kwargs) -> "Emu3Processor":
        """Tokenizer from `tokenizer_dir` (an LM checkpoint); image processor and VQ model from
        `vq_dir` (a vision tokenizer or combined -hf checkpoint) when given. Each is a local
        directory or a hub repo id (`revision`, `cache_dir`, `local_files_only`: see emu3_vq.hub).
        Neither given: the default model's LM and vision tokenizer (`emu3_vq.defaults`).
        `image_area` defaults to the LM config.json's ``image_area`` (else 518400);
        `vq_kwargs` go to ``Emu3VQModel.from_pretrained`` (e.g. ``jit=False``)."""
        from emu3_vq import hub as hub_files

        if tokenizer_dir is None:
            if vq_dir is not None:
                raise ValueError("vq_dir needs tokenizer_dir: the default tokenizer only fits the default "
                                 "vision tokenizer")
            from emu3_vq.defaults import model_dirs

            dirs = model_dirs()
            tokenizer_dir, vq_dir = dirs["lm"], dirs["vq"]

        hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        tokenizer = Emu3Tokenizer.from_pretrained(tokenizer_dir, **hub)
        if image_area is None:
            folder = Path(tokenizer_dir)
            if hub_files.is_repo_id(tokenizer_dir):
                folder = hub_files.resolve(tokenizer_dir, ["config.json"], required=(), **hub)
            image_area = _config_image_area(folder / "config.json")
        image_processor = vq_model = None
        if vq_dir is not None:
            from emu3_vq.model import Emu3VQModel
            from emu3_vq.processor import Emu3ImageProcessor

            image_processor = Emu3ImageProcessor.from_pretrained(vq_dir, **hub)
            vq_model = Emu3VQModel.from_pretrained(vq_dir, **hub, **vq_kwargs)
        return cls(image_processor, vq_model, tokenizer, image_area=image_area)

    # ---- layouts ----------------------------------------------------------------------------
    def generation_size(self, ratio: str = "1:1", image_area: int | None = None) -> tuple[int, int]:
        """(H, W) in tokens for generating an image at `ratio` ("W:H")."""
        area = self.image_area if image_area is None else image_area
        return calculate_generate_size(ratio, area, self.spatial_factor)

    def image_prefix_ids(self, height: int, width: int) -> list[int]:
        """boi + "{H}*{W}" + img: what precedes the visual tokens of an image block."""
        return blocks.prefix_ids(height, width, self.tokenizer)

    def image_block_ids(self, codes) -> np.ndarray:
        """VQ codes [H, W] -> the full image block, int32: boi "{H}*{W}" img, H rows of
        [W visual tokens, eol], eof, eoi. Codes [T, H, W] give a video block (per latent
        frame the rows and eof, then eoi)."""
        return blocks.block_ids(_to_numpy(codes), self.tokenizer)

    @staticmethod
    def num_generated_image_tokens(height: int, width: int) -> int:
        """Tokens a mode-G prompt is followed by: H rows of W+1, then eof, eoi, eos."""
        return blocks.num_generated_tokens(height, width)

    def generation_prompt_ids(self, text: str, height: int, width: int) -> list[int]:
        """Mode G: bos + prompt + boi + "{H}*{W}" + img."""
        return [self.tokenizer.bos_id] + self.tokenizer.encode(text) + self.image_prefix_ids(height, width)

    def understanding_prompt_ids(self, text: str, codes) -> list[int]:
        """Mode U: bos + "You are a helpful assistant. USER: " + image block + text + ". ASSISTANT:"."""
        tok = self.tokenizer
        codes = _to_numpy(codes)
        if codes.ndim != 2:
            raise ValueError(f"image codes must be [H, W], got shape {codes.shape}")
        return ([tok.bos_id] + self._system_ids + self.image_block_ids(codes).tolist()
                + tok.encode(text + ASSISTANT_SUFFIX))

    # ---- images <-> codes ---------------------------------------------------------------------
    def _require_vq(self, what: str):
        if self.vq_model is None or self.image_processor is None:
            raise ValueError(f"{what} needs an image processor and a VQ model; this processor has none")

    def encode_images(self, images, pad_images: bool = False) -> list[np.ndarray]:
        """PIL images -> VQ codes, one [h, w] int array per image. Images that resize to
        different sizes are encoded one by one (exact), or with `pad_images` as one padded
        batch whose codes are cropped back (faster; codes near the padding may differ)."""
        self._require_vq("encoding images")
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ValueError("no images given")
        ip = self.image_processor
        sizes = [ip.target_size(im) for im in images]
        f = self.spatial_factor
        if len(set(sizes)) == 1:
            codes = _to_numpy(self.vq_model.encode(ip.preprocess(images)))
            return [c for c in codes]
        if pad_images:
            pixels, sizes = ip.preprocess_batch(images)
            codes = _to_numpy(self.vq_model.encode(pixels))
            return [c[: h // f, : w // f] for c, (h, w) in zip(codes, sizes)]
        return [_to_numpy(self.vq_model.encode(ip.preprocess([im])))[0] for im in images]

    def decode_codes(self, codes) -> Image.Image:
        """VQ codes [h, w] -> a PIL image (vq_model.decode + image_processor.postprocess)."""
        self._require_vq("decoding an image block")
        codes = _to_numpy(codes)
        if codes.ndim != 2:
            raise ValueError(f"image codes must be [h, w], got shape {codes.shape}")
        pixels = self.vq_model.decode(codes[None].astype(np.int32))
        return self.image_processor.postprocess(pixels)[0]

    def decode_video_codes(self, codes) -> list[Image.Image]:
        """VQ codes [t, h, w] (latent frames) -> the PIL frames of the video, `temporal_downsample_factor`
        (4) per latent frame, all decoded together (vq_model.decode of [1, t, h, w])."""
        self._require_vq("decoding a video block")
        codes = _to_numpy(codes)
        if codes.ndim != 3:
            raise ValueError(f"video codes must be [t, h, w], got shape {codes.shape}")
        pixels = _to_numpy(self.vq_model.decode(codes[None].astype(np.int32)))  # [1, 4t, 3, H, W]
        return self.image_processor.postprocess(pixels[0])

    # ---- batches -------------------------------------------------------------------------------
    def __call__(self, text, images=None, *, mode: str = "G", ratio="1:1", image_area: int | None = None,
                 padding_side: str = "left", max_len: int | None = None, image_codes=None,
                 pad_images: bool = False) -> dict:
        """Prompt ids for a text or a batch of texts.

        mode "G": one image is to be generated per text at `ratio` ("W:H", one string or one
        per text) covering about `image_area` pixels. mode "U": one image per text (`images`,
        PIL, encoded with the VQ model; or `image_codes`, [h, w] code arrays) followed by the
        question. Returns ``input_ids`` int32 [B, L] (padded with the pad id on
        `padding_side`), ``attention_mask`` int32 [B, L] and ``image_size`` int32 [B, 2] (H, W
        in tokens). Raises ValueError when a prompt is longer than `max_len`.
        """
        if mode not in ("U", "G"):
            raise ValueError(f"mode must be 'U' (understanding) or 'G' (generation), got {mode!r}")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("text must be a string or a non-empty list of strings")

        seqs, sizes = [], []
        if mode == "G":
            if images is not None or image_codes is not None:
                raise ValueError("mode 'G' takes no images: it prepares prompts for generating them")
            ratios = [ratio] * len(texts) if isinstance(ratio, str) else list(ratio)
            if len(ratios) != len(texts):
                raise ValueError(f"{len(ratios)} ratios given for {len(texts)} texts")
            for t, r in zip(texts, ratios):
                h, w = self.generation_size(r, image_area)
                seqs.append(self.generation_prompt_ids(t, h, w))
                sizes.append((h, w))
        else:
            if (images is None) == (image_codes is None):
                raise ValueError("mode 'U' needs exactly one of images or image_codes, one per text")
            if image_codes is None:
                image_codes = self.encode_images(images, pad_images=pad_images)
            elif not isinstance(image_codes, (list, tuple)):
                arr = _to_numpy(image_codes)
                image_codes = list(arr) if arr.ndim == 3 else [arr]
            if len(image_codes) != len(texts):
                raise ValueError(f"{len(image_codes)} images given for {len(texts)} texts; give one per text")
            for t, c in zip(texts, image_codes):
                c = _to_numpy(c)
                seqs.append(self.understanding_prompt_ids(t, c))
                sizes.append(c.shape)

        if max_len is not None:
            for i, s in enumerate(seqs):
                if len(s) > max_len:
                    raise ValueError(f"prompt {i} has {len(s)} tokens, more than max_len={max_len}")
        input_ids, attention_mask = pad_batch(seqs, self.tokenizer.pad_id, padding_side)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "image_size": np.asarray(sizes, dtype=np.int32).reshape(len(seqs), 2),
        }

    # ---- ids -> text and images ------------------------------------------------------------------
    def split_blocks(self, ids) -> list[tuple[str, object]]:
        """Split one id sequence into ("text", ids list), ("image", codes [H, W]) and
        ("video", codes [T, H, W]) parts. A block runs from boi to eoi; one with a single frame
        is an image, one with several a video; a malformed block raises ValueError."""
        ids = _to_numpy(ids)
        if ids.ndim != 1:
            raise ValueError(f"expected one id sequence (1-D), got shape {ids.shape}")
        ids = ids.astype(np.int64).tolist()
        tok = self.tokenizer
        parts: list[tuple[str, object]] = []
        pos = 0
        while pos < len(ids):
            try:
                start = ids.index(tok.boi_id, pos)
            except ValueError:
                start = len(ids)
            if start > pos:
                parts.append(("text", ids[pos:start]))
            if start == len(ids):
                break
            try:
                end = ids.index(tok.eoi_id, start)
            except ValueError:
                raise ValueError(f"image block starting at position {start} has no end token "
                                 f"{tok.eoi_token!r}") from None
            codes = self.parse_image_block(ids[start:end + 1], position=start)
            parts.append(("image" if codes.ndim == 2 else "video", codes))
            pos = end + 1
        return parts

    def parse_image_block(self, block: Sequence[int], position: int = 0) -> np.ndarray:
        """boi "{H}*{W}" img, per frame H rows of [W visual, eol] and eof, then eoi -> VQ codes:
        [H, W] for a one-frame block (an image), [T, H, W] for a block of T > 1 frames (a video,
        as ``emu3_decoding.continue_video`` lays it out). Every row and the size text are
        checked (``emu3_lm.blocks.parse_block``); `position` is where the block starts in the
        sequence, for the error messages."""
        codes = blocks.parse_block(block, self.tokenizer, position=position)
        return codes[0] if len(codes) == 1 else codes

    def decode(self, ids, skip_special_tokens: bool = False) -> list:
        """One id sequence -> list of str (text parts), PIL images (image blocks) and lists of
        PIL frames (video blocks), blocks decoded through the VQ model. `skip_special_tokens`
        drops special tokens from the text parts."""
        out = []
        for kind, value in self.split_blocks(ids):
            if kind == "image":
                out.append(self.decode_codes(value))
            elif kind == "video":
                out.append(self.decode_video_codes(value))
            else:
                text = self.tokenizer.decode(value, skip_special_tokens=skip_special_tokens)
                if text:
                    out.append(text)
        return out

    def batch_decode(self, ids, skip_special_tokens: bool = False) -> list[list]:
        """[B, L] ids -> one decode() list per row."""
        return [self.decode(row, skip_special_tokens) for row in _to_numpy(ids)]
