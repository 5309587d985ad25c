"""Image processor of the Emu3 vision tokenizer: resize, rescale, normalise, and back.

Behaves like BAAI's `Emu3VisionVQImageProcessor` (image_processing_emu3visionvq.py) and
transformers' `Emu3ImageProcessor`: each image is resized with PIL bicubic to the size
`smart_resize` picks (sides multiples of the spatial factor, area within
[min_pixels, max_pixels]), scaled by 1/255 and normalised with the checkpoint's mean/std.
Reads and writes preprocessor_config.json in either layout.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .config import read_json

CONFIG_NAME = "preprocessor_config.json"
ORIGINAL_TYPE = "Emu3VisionVQImageProcessor"  # BAAI/Emu3-VisionTokenizer
HF_TYPE = "Emu3ImageProcessor"  # transformers (Emu3-Gen-hf, Emu3-Chat-hf)
# transformers' class defaults to the CLIP statistics; the original class to 0.5 / 0.5
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# the largest image area a config may allow: an 8192x8192 image already needs some 64 GB per
# activation of the released VQ's first stage, so a larger limit is a mistake, refused before
# anything is allocated
MAX_PIXELS_LIMIT = 8192 * 8192
_PIL_FILTERS = (0, 1, 2, 3, 4, 5)  # NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING


def smart_resize(height: int, width: int, factor: int = 8, min_pixels: int = 512 * 512,
                 max_pixels: int = 1024 * 1024, max_ratio: float = 5.0) -> tuple[int, int]:
    """The (height, width) an image is resized to before tokenising.

    Each side is rounded to a multiple of `factor`; if the area then exceeds `max_pixels`
    the image is scaled down (sides floored to multiples of `factor`), if it falls below
    `min_pixels` it is scaled up (sides ceiled), keeping the aspect ratio. Raises
    ValueError for a side shorter than `factor` or an aspect ratio above `max_ratio`.
    """
    if height < factor or width < factor:
        raise ValueError(f"image of {width}x{height} pixels is too small: "
                         f"both sides must be at least {factor} pixels")
    ratio = max(height, width) / min(height, width)
    if ratio > max_ratio:
        raise ValueError(f"image of {width}x{height} pixels is too elongated: aspect ratio "
                         f"{ratio:.2f} exceeds {max_ratio:g}")
    h = round(height / factor) * factor  # Python's round: half to even, as the original
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        # max(factor, ...) only matters for settings the original would turn into a 0 side
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def to_rgb(image) -> Image.Image:
    """A PIL RGB image; transparency is composited onto white (as transformers does).

    Images of more than 8 bits a channel are scaled to 8 bits, never clipped (Pillow's own
    conversion clips them to white or black): 16-bit images (modes I;16, I;16B, ...: 16-bit
    grey PNG and TIFF) by their full range, 0..65535 to 0..255; 32-bit integer (I) and float
    (F) images, which carry no range of their own, from their smallest to their largest value
    (an image of one value becomes black). A float image holding NaN or inf, and a mode Pillow
    cannot turn into RGB, are a ValueError naming the mode.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8 (0..255), got {image.dtype}")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"image arrays must be HxW, HxWx3 or HxWx4, got shape {image.shape}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    image = _to_8_bits(image)
    if image.mode == "RGB":
        return image
    try:
        if any(band in ("A", "a") for band in image.getbands()) or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError as exc:
        raise ValueError(f"images of mode {image.mode!r} are not supported: {exc}") from None


def _to_8_bits(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images as 8-bit grey (mode L), by the rule in `to_rgb`."""
    if image.mode.startswith("I;16"):
        x = np.asarray(image).astype(np.float64) * (255 / 65535)
    elif image.mode in ("I", "F"):
        x = np.asarray(image).astype(np.float64)
        if not np.isfinite(x).all():
            raise ValueError(f"image of mode {image.mode!r} holds NaN or inf values")
        low, high = (x.min(), x.max()) if x.size else (0.0, 0.0)
        x = (x - low) * (255 / (high - low)) if high > low else np.zeros_like(x)
    else:
        return image
    return Image.fromarray(np.rint(x).astype(np.uint8), "L")


@dataclass
class Emu3ImageProcessor:
    """Pre- and post-processing of images for the Emu3 vision tokenizer.

    Defaults are those of BAAI/Emu3-VisionTokenizer (pixels normalised to [-1, 1]);
    `from_pretrained` reads a checkpoint's own preprocessor_config.json.
    """

    do_resize: bool = True
    resample: int = 3  # PIL.Image.BICUBIC
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    do_convert_rgb: bool = True
    min_pixels: int = 512 * 512
    max_pixels: int = 1024 * 1024
    spatial_factor: int = 8  # pixels per code along a side: 2 ** (len(ch_mult) - 1)
    max_aspect_ratio: float = 5.0  # the original rejects more elongated images (transformers: 200)
    image_processor_type: str = ORIGINAL_TYPE
    extra: dict = field(default_factory=dict)  # other keys of the file, written back as they were

    def __post_init__(self):
        """Every rule on the fields, in one place; errors name the field."""
        for name in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f'"{name}" must be true or false, got {getattr(self, name)!r}')
        for name, low in (("min_pixels", 0), ("max_pixels", 1), ("spatial_factor", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ValueError(f'"{name}" must be an integer >= {low}, got {value!r}')
        if self.max_pixels > MAX_PIXELS_LIMIT:
            raise ValueError(f'"max_pixels" must be at most {MAX_PIXELS_LIMIT} (8192x8192), '
                             f"got {self.max_pixels}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f'"min_pixels" ({self.min_pixels}) exceeds "max_pixels" ({self.max_pixels})')
        if not _is_int(self.resample) or self.resample not in _PIL_FILTERS:
            raise ValueError(f'"resample" must be a PIL filter number {_PIL_FILTERS}, got {self.resample!r}')
        if not _is_number(self.rescale_factor) or not 0 < self.rescale_factor < math.inf:
            raise ValueError(f'"rescale_factor" must be a finite number above 0, '
                             f"got {self.rescale_factor!r}")
        if not _is_number(self.max_aspect_ratio) or not 1 <= self.max_aspect_ratio < math.inf:
            raise ValueError(f'"max_aspect_ratio" must be a finite number >= 1, '
                             f"got {self.max_aspect_ratio!r}")
        self.image_mean = _three(self.image_mean, "image_mean")
        self.image_std = _three(self.image_std, "image_std")
        if any(s == 0 for s in self.image_std):
            raise ValueError(f'"image_std" must not contain 0, got {list(self.image_std)}')

    # ---- preprocessor_config.json --------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> "Emu3ImageProcessor":
        """Read either layout: the original (BAAI) or transformers' Emu3ImageProcessor."""
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: d.pop(k) for k in list(d) if k in names}
        size = d.get("size")
        if isinstance(size, dict):  # transformers keeps the limits under "size" as well
            for key in ("min_pixels", "max_pixels"):
                if key not in kwargs and key in size:
                    kwargs[key] = size[key]
            d.pop("size")
        if kwargs.get("image_processor_type") == HF_TYPE:
            kwargs.setdefault("image_mean", CLIP_MEAN)
            kwargs.setdefault("image_std", CLIP_STD)
        return cls(**kwargs, extra=d)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d["image_mean"] = list(self.image_mean)
        d["image_std"] = list(self.image_std)
        d["size"] = {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels}
        return {**self.extra, **d}

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, *, revision=None, cache_dir=None,
                        local_files_only: bool = False) -> "Emu3ImageProcessor":
        """Load from a checkpoint directory (its preprocessor_config.json), a JSON file, or a hub
        repo id (only preprocessor_config.json is fetched; see emu3_vq.hub); None: the default
        model's (`emu3_vq.defaults`)."""
        from . import hub

        if path is None:
            from .defaults import vq_dir

            path = vq_dir(quiet=False)

        if hub.is_repo_id(path):
            path = hub.resolve(path, [CONFIG_NAME], required=(CONFIG_NAME,), revision=revision, cache_dir=cache_dir,
                               local_files_only=local_files_only)
        path = Path(path)
        file = path / CONFIG_NAME if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"image processor config not found: {file}")
        d = read_json(file)
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{file}: {exc}") from None

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write preprocessor_config.json into `directory` (atomically); returns its path."""
        from .weights import atomic_write

        path = Path(directory) / CONFIG_NAME
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
        return path

    # ---- sizes ---------------------------------------------------------------------------
    def smart_resize(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) this processor resizes a height x width image to."""
        return smart_resize(height, width, self.spatial_factor, self.min_pixels, self.max_pixels,
                            self.max_aspect_ratio)

    def target_size(self, image) -> tuple[int, int]:
        """The (height, width) `image` (PIL or HxW[xC] array) is preprocessed to."""
        width, height = _size(image)
        return self.size_for(height, width)

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) a height x width image is preprocessed to; ValueError if unusable."""
        if self.do_resize:
            return self.smart_resize(height, width)
        f = self.spatial_factor
        if height % f or width % f:
            raise ValueError(f"image of {width}x{height} pixels: with do_resize off both sides "
                             f"must be multiples of {f}")
        return height, width

    # ---- images -> pixels ----------------------------------------------------------------
    def _pixels(self, image, size: tuple[int, int]) -> np.ndarray:
        """One image -> float32 [3, H, W] at `size` (height, width)."""
        image = to_rgb(image) if self.do_convert_rgb else _as_pil(image)
        if self.do_resize:
            image = image.resize((size[1], size[0]), resample=self.resample)
        x = np.asarray(image)
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"expected an RGB image, got array shape {x.shape}")
        if (x.shape[0], x.shape[1]) != tuple(size):
            raise ValueError(f"image of {x.shape[1]}x{x.shape[0]} pixels, expected {size[1]}x{size[0]}")
        if self.do_rescale:  # in float64 then float32, as transformers' rescale
            x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            x = x.astype(np.float32)
        if self.do_normalize:
            x = (x - np.array(self.image_mean, np.float32)) / np.array(self.image_std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def preprocess(self, images) -> np.ndarray:
        """An image or a list of images (PIL or uint8 HxWx3 arrays) -> float32 [B, 3, H, W].

        Every image is resized to its own smart_resize size; images that end up with
        different sizes are an error here (use `preprocess_batch`, which pads).
        """
        images = _as_list(images)
        sizes = [self.target_size(im) for im in images]
        if len(set(sizes)) > 1:
            shown = ", ".join(f"{w}x{h}" for h, w in sizes)
            raise ValueError(f"images resize to different sizes ({shown}); use preprocess_batch to pad them")
        return np.stack([self._pixels(im, s) for im, s in zip(images, sizes)])

    def preprocess_batch(self, images) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Images of any sizes -> (float32 [B, 3, Hmax, Wmax], per-image (height, width)).

        Each image is resized to its own size and padded with zeros at the bottom and right
        to the largest height and width (as transformers' Emu3ImageProcessor does); crop
        image i's codes to (h_i // factor, w_i // factor) and its pixels to (h_i, w_i).
        """
        images = _as_list(images)
        sizes = [self.target_size(im) for im in images]
        height = max(h for h, _ in sizes)
        width = max(w for _, w in sizes)
        out = np.zeros((len(images), 3, height, width), np.float32)
        for i, (im, (h, w)) in enumerate(zip(images, sizes)):
            out[i, :, :h, :w] = self._pixels(im, (h, w))
        return out, sizes

    def preprocess_video(self, frames: Sequence) -> np.ndarray:
        """Frames of one video -> float32 [T, 3, H, W], all at the size the first frame gets."""
        frames = _as_list(frames)
        first = _size(frames[0])
        for i, frame in enumerate(frames):
            if _size(frame) != first:
                w, h = _size(frame)
                raise ValueError(f"video frame {i} is {w}x{h} pixels but frame 0 is {first[0]}x{first[1]}; "
                                 f"all frames of a video must have one size")
        size = self.target_size(frames[0])
        return np.stack([self._pixels(frame, size) for frame in frames])

    # ---- pixels -> images ----------------------------------------------------------------
    def postprocess(self, pixels, sizes: Sequence[tuple[int, int]] | None = None) -> list[Image.Image]:
        """float pixels [..., 3, H, W] -> PIL RGB images (leading dimensions flattened).

        Inverts the normalisation, multiplies by 255, clips to [0, 255] and truncates to
        uint8, as the original does. `sizes` ((height, width) per image) crops padding.
        """
        x = pixels.asnumpy() if hasattr(pixels, "asnumpy") else pixels
        x = np.asarray(x, dtype=np.float32)
        if x.ndim < 3 or x.shape[-3] != 3:
            raise ValueError(f"expected pixels shaped [..., 3, H, W], got {x.shape}")
        x = x.reshape(-1, *x.shape[-3:])
        if sizes is not None and len(sizes) != len(x):
            raise ValueError(f"{len(sizes)} sizes given for {len(x)} images")
        if self.do_normalize:  # the original's inverse: normalise with mean -m/s and std 1/s
            mean = np.array([-m / s for m, s in zip(self.image_mean, self.image_std)], np.float32)
            std = np.array([1 / s for s in self.image_std], np.float32)
            x = (x - mean[:, None, None]) / std[:, None, None]
        if self.do_rescale:
            x = (x.astype(np.float64) * (1 / self.rescale_factor)).astype(np.float32)
        x = x.clip(0, 255).astype(np.uint8)
        images = []
        for i, image in enumerate(x):
            if sizes is not None:
                h, w = sizes[i]
                image = image[:, :h, :w]
            images.append(Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))))
        return images


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _three(value, name: str) -> tuple[float, float, float]:
    if _is_number(value):
        value = (value,) * 3
    if (not isinstance(value, (list, tuple, np.ndarray)) or len(value) != 3
            or not all(_is_number(v) and math.isfinite(v) for v in value)):
        raise ValueError(f'"{name}" must have 3 finite numbers (one per channel), got {value!r}')
    return tuple(float(v) for v in value)


def _as_list(images) -> list:
    if isinstance(images, np.ndarray) and images.ndim == 4:  # [N, H, W, C]
        images = list(images)
    elif isinstance(images, (Image.Image, np.ndarray)):
        images = [images]
    images = list(images)
    if not images:
        raise ValueError("no images given")
    return images


def _as_pil(image) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))


def _size(image) -> tuple[int, int]:
    """(width, height) of a PIL image or an HxW[xC] array."""
    if isinstance(image, Image.Image):
        return image.size
    if isinstance(image, np.ndarray) and image.ndim in (2, 3):
        return image.shape[1], image.shape[0]
    raise TypeError(f"expected a PIL image or an HxW[xC] numpy array, got {type(image).__name__}")
