"""Reading and writing images and videos: image files, folders of frames, GIFs.

A video is a folder of frame images (taken in natural name order: frame_2 before
frame_10) or an animated image file (GIF, APNG, WebP). Every write goes to a temporary
file that is renamed when complete, so a failure never leaves a half-written file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageSequence, UnidentifiedImageError

from .processor import to_rgb
from .weights import atomic_write

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".gif",)


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if path.is_dir():
        raise ValueError(f"expected an image file, got a directory: {path}")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None
    return image


def load_image(path: str | os.PathLike) -> Image.Image:
    """One image file as a PIL RGB image (transparency composited onto white)."""
    return to_rgb(_open(Path(path)))


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file, reading only its header."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None


def is_video_path(path: str | os.PathLike) -> bool:
    """True for a folder of frames or a GIF; other files are single images."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in VIDEO_SUFFIXES


def frame_files(directory: str | os.PathLike) -> list[Path]:
    """The frame images of a folder, in natural name order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"frame folder not found: {directory}")
    files = [p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES]
    if not files:
        raise ValueError(f"no frame images ({', '.join(FRAME_SUFFIXES)}) in {directory}")
    return sorted(files, key=_natural_key)


def video_info(path: str | os.PathLike) -> tuple[int, tuple[int, int]]:
    """(frame count, (width, height) of the first frame) without decoding every frame."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video not found: {path}")
    if path.is_dir():
        files = frame_files(path)
        return len(files), _open(files[0]).size
    image = _open(path)
    return getattr(image, "n_frames", 1), image.size


def load_frames(path: str | os.PathLike) -> list[Image.Image]:
    """A video as a list of PIL RGB frames: a folder of frame images or an animated image."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video not found: {path}")
    if path.is_dir():
        return [load_image(p) for p in frame_files(path)]
    image = _open(path)
    try:
        frames = [to_rgb(frame.copy()) for frame in ImageSequence.Iterator(image)]
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"cannot read the frames of {path}: {exc}") from None
    if not frames:
        raise ValueError(f"no frames in {path}")
    return frames


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write one image as PNG; the file appears only when complete."""
    path = Path(path)
    atomic_write(path, lambda f: image.save(f, format="PNG"))
    return path


def save_gif(frames: Sequence[Image.Image], path: str | os.PathLike, fps: float = 8.0) -> Path:
    """Write frames as a looping animated GIF (256-colour palette per frame)."""
    frames = list(frames)
    if not frames:
        raise ValueError("no frames to write")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = Path(path)
    duration = max(1, round(1000 / fps))
    atomic_write(path, lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:],
                                                duration=duration, loop=0))
    return path


def save_frames(frames: Sequence[Image.Image], directory: str | os.PathLike,
                prefix: str = "frame_") -> list[Path]:
    """Write frames as PNG files `prefix0000.png`, `prefix0001.png`, ... in `directory`
    (removing numbered frames beyond the last that an earlier save left there)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = [save_png(frame, directory / f"{prefix}{i:04d}.png") for i, frame in enumerate(frames)]
    # frames left from an earlier, longer video would otherwise join this one
    pattern = re.compile(re.escape(prefix) + r"\d{4,}\.png")
    for old in directory.iterdir():
        if pattern.fullmatch(old.name) and old not in written:
            old.unlink()
    return written
