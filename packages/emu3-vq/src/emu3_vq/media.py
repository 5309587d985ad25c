"""Reading and writing images and videos: image files, folders of frames, GIFs.

A video is a folder of frame images (taken in natural name order: frame_2 before
frame_10) or an animated image file (GIF, APNG, WebP). Every write goes to a temporary
file (or, for a folder of frames, a temporary folder) that is renamed when complete, so a
failure or Ctrl-C never leaves a half-written file or folder.
"""

from __future__ import annotations

import numbers
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image, ImageSequence, UnidentifiedImageError

from .processor import to_rgb
from .weights import atomic_write

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".gif",)


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
                Image.DecompressionBombError)  # the last: more pixels than Pillow's limit


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if path.is_dir():
        raise ValueError(f"expected an image file, got a directory: {path}")


def _open(path: Path) -> Image.Image:
    _check_file(path)
    try:
        image = Image.open(path)
        image.load()
    except _READ_ERRORS as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None
    return image


def _rgb(image: Image.Image, path: Path) -> Image.Image:
    try:
        return to_rgb(image)
    except ValueError as exc:  # an unsupported mode, NaN pixels
        raise ValueError(f"{path}: {exc}") from None


def load_image(path: str | os.PathLike) -> Image.Image:
    """One image file as a PIL RGB image (transparency composited onto white; 16-bit and float
    images scaled to 8 bits, see `processor.to_rgb`)."""
    return _rgb(_open(Path(path)), Path(path))


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file, reading only its header (see `check_image`)."""
    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as image:
            return image.size
    except _READ_ERRORS as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None


def check_image(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file after reading and converting it whole, so that what
    `load_image` would fail on (corrupt data, an unsupported mode, NaN pixels) fails here,
    before a command does any work. Costs one decoding of the image."""
    return load_image(path).size


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


def _frames(path: Path) -> Iterator[Image.Image]:
    """The frames of a video as PIL RGB images, one at a time."""
    if not path.exists():
        raise FileNotFoundError(f"video not found: {path}")
    if path.is_dir():
        for file in frame_files(path):
            yield load_image(file)
        return
    frames = ImageSequence.Iterator(_open(path))
    count = 0
    while True:
        try:
            frame = next(frames).copy()
        except StopIteration:
            break
        except _READ_ERRORS as exc:
            raise ValueError(f"cannot read the frames of {path}: {exc}") from None
        count += 1
        yield _rgb(frame, path)
    if not count:
        raise ValueError(f"no frames in {path}")


def load_frames(path: str | os.PathLike) -> list[Image.Image]:
    """A video as a list of PIL RGB frames: a folder of frame images or an animated image."""
    return list(_frames(Path(path)))


def check_video(path: str | os.PathLike) -> tuple[int, tuple[int, int]]:
    """(frame count, (width, height)) after reading every frame, one at a time: an unreadable
    frame or frames of different sizes fail here, before a command does any work."""
    path = Path(path)
    count, size = 0, None
    for frame in _frames(path):
        if size is None:
            size = frame.size
        elif frame.size != size:
            raise ValueError(f"{path}: frame {count} is {frame.size[0]}x{frame.size[1]} pixels but "
                             f"frame 0 is {size[0]}x{size[1]}; all frames of a video must have one size")
        count += 1
    return count, size


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write one image as PNG; the file appears only when complete."""
    path = Path(path)
    atomic_write(path, lambda f: image.save(f, format="PNG"))
    return path


MIN_FPS, MAX_FPS = 0.01, 100.0


def check_fps(fps: float) -> float:
    """`fps` if a GIF can play it: GIF frame delays are whole centiseconds up to 655.35 s, so
    rates above 100 would silently play slower and tiny ones cannot be stored. ValueError else."""
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not MIN_FPS <= fps <= MAX_FPS:  # NaN too
        raise ValueError(f"fps must be a number from {MIN_FPS:g} to {MAX_FPS:g} (GIF frame delays are "
                         f"whole centiseconds), got {fps}")
    return float(fps)


def save_gif(frames: Sequence[Image.Image], path: str | os.PathLike, fps: float = 8.0) -> Path:
    """Write frames as a looping animated GIF (256-colour palette per frame)."""
    check_fps(fps)
    frames = list(frames)
    if not frames:
        raise ValueError("no frames to write")
    path = Path(path)
    duration = round(1000 / fps)  # ms; at most 100 fps, so at least one centisecond
    atomic_write(path, lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:],
                                                duration=duration, loop=0))
    return path


def save_frames(frames: Sequence[Image.Image], directory: str | os.PathLike,
                prefix: str = "frame_") -> list[Path]:
    """Write frames as PNG files `prefix0000.png`, `prefix0001.png`, ... making up `directory`.

    The folder is committed as a whole: written as a hidden sibling folder, then renamed into
    place, replacing a folder of that name whole (an earlier, longer video's frames never join
    this one). An interrupted save leaves the old folder, or none.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    old = tmp.with_name(tmp.name[:-len(".tmp")] + ".old")
    tmp.mkdir()
    written = []
    try:
        for i, frame in enumerate(frames):
            save_png(frame, tmp / f"{prefix}{i:04d}.png")
            written.append(directory / f"{prefix}{i:04d}.png")
        if directory.is_dir() and not directory.is_symlink():
            os.replace(directory, old)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not directory.exists():  # put the old folder back
            os.replace(old, directory)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return written
