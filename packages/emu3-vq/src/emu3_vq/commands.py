"""`emu3 vq encode|decode|reconstruct`: images and videos to codes and back.

Inputs: image files (several form a batch), or videos: a folder of frames, a GIF or an MP4,
whose frame count must be a multiple of the temporal factor (4). Codes are .npy files: [h, w]
for an image, [T/4, h, w] for a video. Images decode to PNG, videos to a GIF plus one PNG
per frame (--video-format: any of gif, mp4, frames). MP4 needs the extra `video`
(pip install 'emu3-vq[video]'). --model is a checkpoint directory or a hub repo id (org/name);
without it the default model's vision tokenizer (emu3-shapes, when installed), else a tiny one
with random weights, with a note saying so.

Every option, every input (read whole) and every output is checked before the model is
loaded (a hub repo id: before its weights are, once its config is known) or a file written;
each output appears complete or not at all.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from . import media
from .cli import (
    UserError,
    add_runtime_options,
    apply_runtime,
    arg_type,
    check_outputs,
    int_at_least,
    progress,
)
from .weights import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_FORMATS = ("gif", "mp4", "frames")  # name.gif, name.mp4, name_frames/ (one PNG per frame)
DEFAULT_VIDEO_FORMATS = ("gif", "frames")


def _video_formats(text: str) -> tuple[str, ...]:
    """`--video-format`: a comma-separated selection of VIDEO_FORMATS, e.g. `mp4` or `gif,frames`."""
    formats = tuple(f.strip().lower() for f in text.split(","))
    unknown = [f for f in formats if f not in VIDEO_FORMATS]
    if unknown or not formats:
        raise ValueError(f"expected one or more of {', '.join(VIDEO_FORMATS)} separated by commas, got {text!r}")
    if len(set(formats)) != len(formats):
        raise ValueError(f"a format is named twice in {text!r}")
    return formats


def register(subparsers) -> None:
    """Add the `vq` command group to the `emu3` parser."""
    vq = subparsers.add_parser("vq", help="vision tokenizer: images and videos <-> codes",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = vq.add_subparsers(dest="vq_command", metavar="COMMAND")
    sub.required = True

    def common(p, batch=True):
        p.add_argument("--model", metavar="DIR|ORG/NAME",
                       help="vision tokenizer: a checkpoint directory or a hub repo id (default: the "
                            "embedded demo model)")
        p.add_argument("--revision", metavar="REV", default=None,
                       help="branch, tag or commit of a hub repo id --model (default: its main branch)")
        p.add_argument("-o", "--output-dir", metavar="DIR", default=".",
                       help="where to write the results (default: the current directory)")
        p.add_argument("--overwrite", action="store_true", help="replace existing output files")
        p.add_argument("--jit", choices=("auto", "on", "off"), default="auto",
                       help="compile the model to a graph: each new input size costs a compilation "
                            "(seconds to minutes) and later calls run faster; auto: off on CPU, "
                            "on elsewhere (default: auto)")
        if batch:
            p.add_argument("--batch-size", type=int_at_least(1), default=4, metavar="N",
                           help="images of the same size encoded together (default: 4)")
        add_runtime_options(p)

    fps_type = arg_type(lambda text: media.check_fps(float(text)))

    def video_output(p):
        p.add_argument("--fps", type=fps_type, default=8.0,
                       help="frame rate of GIF and MP4 outputs, 0.01 to 100 (default: 8)")
        p.add_argument("--video-format", type=arg_type(_video_formats), default=DEFAULT_VIDEO_FORMATS,
                       metavar="FORMATS",
                       help="what a video decodes to, comma-separated: gif (NAME.gif), mp4 (NAME.mp4, "
                            "H.264; needs the extra `video`), frames (NAME_frames/, one PNG per frame) "
                            "(default: gif,frames)")

    enc = sub.add_parser("encode", help="images/videos -> codes (.npy)")
    enc.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, frame folder, GIF or MP4")
    common(enc)
    enc.set_defaults(func=run_encode)

    dec = sub.add_parser("decode", help="codes (.npy) -> PNG image, or GIF/MP4/PNG frames for a video")
    dec.add_argument("inputs", nargs="+", metavar="CODES", help=".npy file: [h, w] image or [t, h, w] video")
    common(dec, batch=False)
    video_output(dec)
    dec.set_defaults(func=run_decode)

    rec = sub.add_parser("reconstruct", help="encode then decode: <name>_recon.png, or .gif/.mp4/frames")
    rec.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, frame folder, GIF or MP4")
    common(rec)
    video_output(rec)
    rec.add_argument("--save-codes", action="store_true", help="also write the codes as <name>.npy")
    rec.set_defaults(func=run_reconstruct)


# ---- the model and its processor ------------------------------------------------------------

AUTO_JIT_MIN_CH = 128  # `--jit auto` compiles models at least this wide (the real one: 256) on every device


class _Tokenizer:
    """The VQ model with its image processor; numpy in, numpy out.

    A local checkpoint directory's config and processor are read first (cheap, enough to
    validate inputs) and the weights by `load()`, after the checks. Anything else given as
    `model` (a hub repo id) goes to `from_pretrained` untouched, which resolves it or raises
    its one-line FileNotFoundError: the processor first (one small file), then the weights,
    whose config the input checks need.
    """

    def __init__(self, model: str | None = None, jit: str = "auto", revision: str | None = None,
                 dtype: str | None = None):
        from .config import Emu3VQConfig
        from .processor import Emu3ImageProcessor

        if model is None:
            if revision is not None:
                raise UserError("--revision needs --model naming a hub repo id (org/name)")
            from .defaults import vq_dir

            model = vq_dir(quiet=False)
        self.name = str(model)
        self.local = Path(model).is_dir()
        self.hub = {} if revision is None else {"revision": revision}
        self.dtype, self.jit = dtype, jit
        self._model = None
        if self.local:
            if revision is not None:
                raise UserError(f"--revision is a hub revision but --model {model} is a local directory")
            path = Path(model)
            if not (path / "config.json").is_file():
                raise UserError(f"{path} has no config.json: not a vision tokenizer checkpoint")
            self.config = Emu3VQConfig.from_json_file(path / "config.json")
            self.processor = Emu3ImageProcessor.from_pretrained(path)
        else:
            self.processor = Emu3ImageProcessor.from_pretrained(self.name, **self.hub)
            self.config = None  # known once the weights are loaded, with their config.json
            self.config = self.load().config
        self.factor = self.config.spatial_factor
        self.frames_per_code = self.config.temporal_downsample_factor
        self.codebook_size = self.config.codebook_size
        if self.processor.spatial_factor != self.factor:
            raise UserError(f"{self.name}: preprocessor_config.json has spatial_factor "
                            f"{self.processor.spatial_factor} but the model downsamples by {self.factor}")
        if (self.config.in_channels, self.config.out_channels) != (3, 3):
            raise UserError(f"{self.name}: config.json: in_channels and out_channels must be 3 "
                            f"(RGB) for images, got {self.config.in_channels} and {self.config.out_channels}")

    def load(self):
        """The model, loaded on the first call: commands call this after every check and before
        the progress bar starts, so that a bad checkpoint is the first line printed."""
        if self._model is None:
            from . import device
            from .model import Emu3VQModel

            jit = self.jit == "on"
            if self.jit == "auto":
                # Compiling costs seconds per input size and pays off at once for real-size
                # models (256x256 on CPU: 3.2 s compiled vs 8.8 s eager, first call 7.4 s); smaller
                # ones are compiled only where the device policy says so (not on CPU). A hub repo
                # id's width is known only once loaded: it counts as real size.
                jit = device.policy().jit_small_models or self.config is None or self.config.ch >= AUTO_JIT_MIN_CH
            options = dict(self.hub, jit=jit)
            if self.dtype is not None:
                options["dtype"] = self.dtype
            self._model = Emu3VQModel.from_pretrained(self.name, **options)
        return self._model

    model = property(load)  # the loaded model (tests of --jit auto read it)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        return _to_numpy(self.load().encode(pixels)).astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return _to_numpy(self.load().decode(codes))


def _tokenizer(args) -> _Tokenizer:
    """Select the device (`--device`, `--threads`) before any model is built, then the tokenizer."""
    apply_runtime(args)
    return _Tokenizer(args.model, args.jit, revision=args.revision, dtype=args.dtype)


def _to_numpy(x) -> np.ndarray:
    return x.asnumpy() if hasattr(x, "asnumpy") else np.asarray(x)


# ---- inputs -----------------------------------------------------------------------------------

class _Input:
    def __init__(self, path: Path, kind: str):
        self.path, self.kind = path, kind
        self.name = path.stem if path.is_file() else path.name
        self.size: tuple[int, int] | None = None  # an image's target (height, width)


def _inputs(paths: list[str]) -> list[_Input]:
    """What each input is (image or video) and its output name; reads no file."""
    inputs = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UserError(f"input not found: {path}")
        if media.is_video_path(path):
            inputs.append(_Input(path, "video"))
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            inputs.append(_Input(path, "image"))
        else:
            raise UserError(f"unsupported input {path}: expected an image "
                            f"({', '.join(IMAGE_SUFFIXES)}), a folder of frames, a .gif or a .mp4")
    _check_names([i.name for i in inputs], paths)
    return inputs


def _read_inputs(inputs: list[_Input], tokenizer: _Tokenizer, video_formats=()) -> None:
    """Read every input whole before any work: what encoding would fail on (corrupt data, an
    unsupported image mode, a size the processor refuses, a frame count or frames of different
    sizes, an MP4 without PyAV) fails here, so that no output of an earlier input is written
    first. `video_formats`: what a video is decoded to (a reconstruction), checked as well."""
    for item in inputs:
        try:
            if item.kind == "video":
                n, (width, height) = media.check_video(item.path)
                t = tokenizer.frames_per_code
                if n % t:
                    raise UserError(f"video {item.path} has {n} frames; the tokenizer needs a multiple "
                                    f"of {t} (drop {n % t} or add {t - n % t})")
                height, width = tokenizer.processor.size_for(height, width)
                if "mp4" in video_formats:
                    media.check_mp4_size(width, height)
            else:
                width, height = media.check_image(item.path)
                item.size = tokenizer.processor.size_for(height, width)
        except ValueError as exc:  # unreadable file, too small, too elongated
            message = str(exc)
            raise UserError(message if str(item.path) in message else f"{item.path}: {message}") from None


def _check_names(names: list[str], paths: list[str]) -> None:
    seen = {}
    for name, path in zip(names, paths):
        if name in seen:
            raise UserError(f"inputs {seen[name]} and {path} would write the same output name {name!r}")
        seen[name] = path


def _decoded_paths(out_dir: Path, name: str, video: bool, video_formats=DEFAULT_VIDEO_FORMATS
                   ) -> tuple[list[Path], list[Path]]:
    """(files, folders) decoding writes: ([name.png], []) for an image; for a video, by
    `video_formats`: name.gif, name.mp4 (files), name_frames (a folder)."""
    if not video:
        return [out_dir / f"{name}.png"], []
    files = [out_dir / f"{name}.{f}" for f in ("gif", "mp4") if f in video_formats]
    return files, [out_dir / f"{name}_frames"] if "frames" in video_formats else []


def _check_video_support(video_formats, inputs=()) -> None:
    """Before any work: MP4 inputs, or mp4 among `--video-format`, need PyAV (the extra `video`)."""
    if "mp4" in video_formats or any(Path(p).suffix.lower() == ".mp4" and not Path(p).is_dir() for p in inputs):
        try:
            media.require_av()
        except media.MissingVideoSupport as exc:
            raise UserError(str(exc)) from None


def _batches(inputs: list[_Input], batch_size: int):
    """Images grouped by target size (no padding, so codes equal single-image encoding)."""
    groups: dict[tuple[int, int], list[_Input]] = {}
    for item in inputs:
        groups.setdefault(item.size, []).append(item)
    for group in groups.values():
        for i in range(0, len(group), batch_size):
            yield group[i:i + batch_size]


def _encode_all(tokenizer: _Tokenizer, inputs: list[_Input], batch_size: int, on_codes) -> None:
    """Encode every input, calling on_codes(input, codes) as results arrive."""
    images = [i for i in inputs if i.kind == "image"]
    videos = [i for i in inputs if i.kind == "video"]
    units = list(_batches(images, batch_size)) + [[v] for v in videos]
    for unit in progress(units, desc="encode"):
        if unit[0].kind == "image":
            pixels = tokenizer.processor.preprocess([media.load_image(i.path) for i in unit])
            codes = tokenizer.encode(pixels)
            for item, c in zip(unit, codes):
                on_codes(item, c)
        else:
            frames = media.load_frames(unit[0].path)
            pixels = tokenizer.processor.preprocess_video(frames)
            on_codes(unit[0], tokenizer.encode(pixels[None])[0])


def _write_decoded(tokenizer: _Tokenizer, codes: np.ndarray, out_dir: Path, name: str,
                   fps: float, video_formats=DEFAULT_VIDEO_FORMATS) -> list[Path]:
    """Decode one image's [h, w] or one video's [t, h, w] codes and write a PNG, or a video
    in `video_formats` (GIF, MP4, frames)."""
    pixels = tokenizer.decode(codes[None])[0]
    images = tokenizer.processor.postprocess(pixels)
    files, folders = _decoded_paths(out_dir, name, codes.ndim == 3, video_formats)
    if codes.ndim == 2:
        media.save_png(images[0], files[0])
        return files
    for folder in folders:
        media.save_frames(images, folder)
    for file in files:
        media.save_video(images, file, fps=fps)
    return [*files, *folders]


def _load_codes(path: Path, tokenizer: _Tokenizer, video_formats=()) -> np.ndarray:
    """A codes file, checked: integers in the codebook, [h, w] or [t, h, w], and no larger than
    the images this tokenizer makes (refused before the decoder allocates anything)."""
    if not path.is_file():
        raise UserError(f"codes file not found: {path}" if not path.exists() else f"{path} is not a file")
    try:
        codes = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"cannot read codes from {path}: {exc}") from None
    if not isinstance(codes, np.ndarray) or codes.dtype.kind not in "iu":
        raise UserError(f"{path}: codes must be an integer array, got {getattr(codes, 'dtype', type(codes))}")
    if codes.ndim not in (2, 3) or 0 in codes.shape:
        raise UserError(f"{path}: codes must be [h, w] (image) or [t, h, w] (video), got shape {codes.shape}")
    size = tokenizer.codebook_size
    if codes.min() < 0 or codes.max() >= size:
        raise UserError(f"{path}: codes must lie in [0, {size}), found {codes.min()}..{codes.max()}")
    f = tokenizer.factor
    pixels = codes.shape[-2] * f * codes.shape[-1] * f
    if tokenizer.processor.do_resize and pixels > tokenizer.processor.max_pixels:
        raise UserError(f"{path}: codes of {codes.shape[-2]}x{codes.shape[-1]} decode to "
                        f"{codes.shape[-1] * f}x{codes.shape[-2] * f} pixels, more than the "
                        f"{tokenizer.processor.max_pixels} (max_pixels) of any image this tokenizer encodes")
    if codes.ndim == 3 and "mp4" in video_formats:
        try:
            media.check_mp4_size(codes.shape[-1] * f, codes.shape[-2] * f)
        except ValueError as exc:
            raise UserError(f"{path}: {exc}") from None
    return codes.astype(np.int64)


# ---- commands ---------------------------------------------------------------------------------

def run_encode(args) -> None:
    inputs = _inputs(args.inputs)
    out_dir = Path(args.output_dir)
    check_outputs([out_dir / f"{i.name}.npy" for i in inputs], args.inputs, args.overwrite)
    _check_video_support((), args.inputs)
    tokenizer = _tokenizer(args)
    _read_inputs(inputs, tokenizer)
    tokenizer.load()

    def save(item, codes):
        path = out_dir / f"{item.name}.npy"
        atomic_write(path, lambda f: np.save(f, codes))
        print(path)

    _encode_all(tokenizer, inputs, args.batch_size, save)


def run_decode(args) -> None:
    out_dir = Path(args.output_dir)
    paths = [Path(p) for p in args.inputs]
    names = [p.stem for p in paths]
    _check_names(names, args.inputs)
    formats = args.video_format
    _check_video_support(formats)
    tokenizer = _tokenizer(args)
    all_codes = [_load_codes(p, tokenizer, formats) for p in paths]
    files, folders = [], []
    for name, codes in zip(names, all_codes):
        more_files, more_folders = _decoded_paths(out_dir, name, codes.ndim == 3, formats)
        files += more_files
        folders += more_folders
    check_outputs(files, args.inputs, args.overwrite, directories=folders)
    tokenizer.load()
    for name, codes in progress(list(zip(names, all_codes)), desc="decode"):
        for path in _write_decoded(tokenizer, codes, out_dir, name, args.fps, formats):
            print(path)


def run_reconstruct(args) -> None:
    inputs = _inputs(args.inputs)
    out_dir = Path(args.output_dir)
    formats = args.video_format
    files, folders = [], []
    for i in inputs:
        more_files, more_folders = _decoded_paths(out_dir, f"{i.name}_recon", i.kind == "video", formats)
        files += more_files
        folders += more_folders
    if args.save_codes:
        files += [out_dir / f"{i.name}.npy" for i in inputs]
    check_outputs(files, args.inputs, args.overwrite, directories=folders)
    _check_video_support(formats, args.inputs)
    tokenizer = _tokenizer(args)
    _read_inputs(inputs, tokenizer, formats)
    tokenizer.load()

    def save(item, codes):
        if args.save_codes:
            path = out_dir / f"{item.name}.npy"
            atomic_write(path, lambda f: np.save(f, codes))
            print(path)
        for path in _write_decoded(tokenizer, codes, out_dir, f"{item.name}_recon", args.fps, formats):
            print(path)

    _encode_all(tokenizer, inputs, args.batch_size, save)
