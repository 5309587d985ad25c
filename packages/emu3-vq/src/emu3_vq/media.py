"""Reading and writing images and videos: image files, folders of frames, GIFs, MP4s.

A video is a folder of frame images (taken in natural name order: frame_2 before
frame_10), an animated image file (GIF, APNG, WebP) or an MP4 file. MP4 needs PyAV, the
optional extra `video` (`pip install 'emu3-vq[video]'`), imported only when an MP4 is read or
written. Every write goes to a temporary file (or, for a folder of frames, a temporary folder)
that is renamed when complete, so a failure or Ctrl-C never leaves a half-written file or folder.

Outputs can carry metadata, a dict of text (what made them: model, seed, command), read back
by `read_metadata`: PNG text chunks (tEXt, or iTXt for text beyond Latin-1), and in a GIF
(whose only text is a comment) or an MP4 (its `comment` tag) the dict as one JSON object.
"""

from __future__ import annotations

import json
import numbers
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path

from PIL import Image, ImageSequence, PngImagePlugin, UnidentifiedImageError

from .processor import to_rgb
from .weights import atomic_write

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".gif", ".mp4")


class MissingVideoSupport(ImportError, ValueError):
    """PyAV is not installed and an MP4 was to be read or written. An ImportError, and a
    ValueError so that the `emu3` command prints it as one `emu3: error:` line."""


def require_av():
    """The `av` module (PyAV), or MissingVideoSupport saying how to install it."""
    try:
        import av
    except ImportError:
        raise MissingVideoSupport("reading/writing MP4 needs PyAV: pip install 'emu3-vq[video]'") from None
    return av


def _is_mp4(path: Path) -> bool:
    return path.suffix.lower() == ".mp4" and not path.is_dir()


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
    """True for a folder of frames, a GIF or an MP4; other files are single images."""
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
    if _is_mp4(path):
        return _mp4_info(path)
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
    if _is_mp4(path):
        yield from _mp4_frames(path)
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
    """A video as a list of PIL RGB frames: a folder of frame images, an animated image or an
    MP4 (every frame of its first video stream)."""
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


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """`metadata` as a dict, checked once for every format, so that one dict fits any output:
    keys are PNG keywords (1 to 79 Latin-1 characters, no leading, trailing or double spaces),
    values any text without NUL characters. ValueError naming the entry else (TypeError for
    what is not text)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict of text, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata keys and values must be text (str), got {key!r}: {value!r}")
        try:
            key.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"metadata key {key!r}: keys must be Latin-1 text (a PNG keyword)") from None
        if not 1 <= len(key) <= 79 or key != key.strip() or "  " in key or not key.isprintable():
            raise ValueError(f"metadata key {key!r}: keys must be 1 to 79 printable characters without "
                             f"leading, trailing or double spaces (a PNG keyword)")
        if "\0" in value:
            raise ValueError(f"metadata value of {key!r} contains a NUL character")
    return dict(metadata)


def _metadata_json(metadata: dict[str, str]) -> str:
    return json.dumps(metadata, ensure_ascii=True, sort_keys=True)  # GIF comments are 7-bit text


def _metadata_from_comment(text: str) -> dict[str, str] | None:
    """The dict stored by `_metadata_json`, or None when `text` is not one."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return value
    return None


def save_png(image: Image.Image, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write one image as PNG, with `metadata` as text chunks (tEXt, iTXt for text beyond
    Latin-1); the file appears only when complete."""
    metadata = _check_metadata(metadata)
    info = None
    if metadata:
        info = PngImagePlugin.PngInfo()
        for key, value in metadata.items():
            info.add_text(key, value)  # Pillow writes iTXt when the value is not Latin-1
    path = Path(path)
    atomic_write(path, lambda f: image.save(f, format="PNG", pnginfo=info))
    return path


MIN_FPS, MAX_FPS = 0.01, 100.0


def check_fps(fps: float) -> float:
    """`fps` if a GIF can play it: GIF frame delays are whole centiseconds up to 655.35 s, so
    rates above 100 would silently play slower and tiny ones cannot be stored. ValueError else."""
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not MIN_FPS <= fps <= MAX_FPS:  # NaN too
        raise ValueError(f"fps must be a number from {MIN_FPS:g} to {MAX_FPS:g} (GIF frame delays are "
                         f"whole centiseconds), got {fps}")
    return float(fps)


def save_gif(frames: Sequence[Image.Image], path: str | os.PathLike, fps: float = 8.0,
             metadata: Mapping[str, str] | None = None) -> Path:
    """Write frames as a looping animated GIF (256-colour palette per frame), with `metadata`
    as JSON in its comment extension."""
    check_fps(fps)
    metadata = _check_metadata(metadata)
    frames = list(frames)
    if not frames:
        raise ValueError("no frames to write")
    path = Path(path)
    duration = round(1000 / fps)  # ms; at most 100 fps, so at least one centisecond
    extra = {"comment": _metadata_json(metadata).encode("ascii")} if metadata else {}
    atomic_write(path, lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:],
                                                duration=duration, loop=0, **extra))
    return path


def save_video(frames: Sequence[Image.Image], path: str | os.PathLike, fps: float = 8.0,
               metadata: Mapping[str, str] | None = None) -> Path:
    """Write frames as a video chosen by the suffix of `path`: `.gif` (`save_gif`) or `.mp4`
    (H.264, see `save_mp4`)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        return save_gif(frames, path, fps=fps, metadata=metadata)
    if suffix == ".mp4":
        return save_mp4(frames, path, fps=fps, metadata=metadata)
    raise ValueError(f"cannot write a video as {path}: use a .gif or .mp4 name")


def mp4_codec(av=None) -> str:
    """The encoder `save_mp4` uses: libx264 (H.264) when the installed PyAV's FFmpeg has it,
    else FFmpeg's own mpeg4 (MPEG-4 Part 2, no external library)."""
    av = av or require_av()
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def check_mp4_size(width: int, height: int) -> None:
    """ValueError unless an MP4 of `save_mp4` can hold width x height frames: its yuv420p
    colour planes are half size, so both must be even (odd sizes are refused, not padded:
    padding would change what reads back)."""
    if width % 2 or height % 2:
        raise ValueError(f"MP4 (H.264, yuv420p) needs an even width and height, got {width}x{height}; "
                         f"crop or pad the frames, or write a GIF or frames")


def save_mp4(frames: Sequence[Image.Image], path: str | os.PathLike, fps: float = 8.0,
             metadata: Mapping[str, str] | None = None) -> Path:
    """Write frames as an MP4 (H.264 yuv420p with libx264 at CRF 18, else mpeg4; see `mp4_codec`)
    at `fps` (the range of `check_fps`), with `metadata` as JSON in the container's `comment`
    tag. All frames must have one even size (`check_mp4_size`). Needs PyAV (`require_av`)."""
    check_fps(fps)
    metadata = _check_metadata(metadata)
    av = require_av()
    frames = [to_rgb(frame) for frame in frames]
    if not frames:
        raise ValueError("no frames to write")
    width, height = frames[0].size
    for i, frame in enumerate(frames):
        if frame.size != (width, height):
            raise ValueError(f"frame {i} is {frame.size[0]}x{frame.size[1]} pixels but frame 0 is "
                             f"{width}x{height}; all frames of a video must have one size")
    check_mp4_size(width, height)
    codec = mp4_codec(av)
    rate = Fraction(fps).limit_denominator(1001)

    def write(f):
        with av.open(f, mode="w", format="mp4") as container:
            if metadata:
                container.metadata["comment"] = _metadata_json(metadata)
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "18"}
            else:  # mpeg4's default 200 kbit/s blurs; about 1 bit per pixel per second instead
                stream.bit_rate = max(200_000, int(width * height * float(rate)))
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_image(frame)))
            container.mux(stream.encode(None))  # flush delayed (B-)frames

    path = Path(path)
    try:
        atomic_write(path, write)
    except av.FFmpegError as exc:
        raise OSError(f"cannot write {path}: {exc}") from None
    return path


def _open_mp4(path: Path):
    """(container, its first video stream) of an MP4; ValueError when unreadable or without video."""
    av = require_av()
    _check_file(path)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read video {path}: {exc}") from None
    if not container.streams.video:
        container.close()
        raise ValueError(f"no video stream in {path}")
    return container, container.streams.video[0]


def _mp4_info(path: Path) -> tuple[int, tuple[int, int]]:
    av = require_av()
    container, stream = _open_mp4(path)
    with container:
        count = stream.frames  # from the header; 0 when the muxer did not say
        try:
            if not count:
                count = sum(1 for packet in container.demux(stream) if packet.size)
        except (av.FFmpegError, ValueError) as exc:
            raise ValueError(f"cannot read the frames of {path}: {exc}") from None
        size = (stream.codec_context.width, stream.codec_context.height)
    if not count:
        raise ValueError(f"no frames in {path}")
    return count, size


def _mp4_frames(path: Path) -> Iterator[Image.Image]:
    av = require_av()
    container, stream = _open_mp4(path)
    count = 0
    with container:
        decoded = container.decode(stream)
        while True:
            try:
                frame = next(decoded)
            except StopIteration:
                break
            except (av.FFmpegError, ValueError) as exc:
                raise ValueError(f"cannot read the frames of {path}: {exc}") from None
            count += 1
            yield frame.to_image()  # RGB
    if not count:
        raise ValueError(f"no frames in {path}")


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a PNG, GIF or MP4 (see the module docstring): a PNG's text chunks; the
    dict `save_gif`/`save_mp4` stored, or else a GIF's comment as {"comment": text} and an MP4's
    container tags as they are. {} when there is none."""
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        container, _ = _open_mp4(path)
        with container:
            tags = {str(k): str(v) for k, v in container.metadata.items()}
        stored = _metadata_from_comment(tags.get("comment", ""))
        return stored if stored is not None else tags
    if suffix not in (".png", ".gif"):
        raise ValueError(f"metadata is read from .png, .gif and .mp4 files, got {path}")
    try:
        with Image.open(path) as image:
            if suffix == ".png":
                return {str(k): str(v) for k, v in getattr(image, "text", {}).items()}
            comment = image.info.get("comment", b"")
    except _READ_ERRORS as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if isinstance(comment, bytes):
        comment = comment.decode("utf-8", errors="replace")
    if not comment:
        return {}
    stored = _metadata_from_comment(comment)
    return stored if stored is not None else {"comment": comment}


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
