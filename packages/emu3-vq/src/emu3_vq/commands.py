"""`emu3 vq encode|decode|reconstruct`: images and videos to codes and back.

Inputs: image files (several form a batch), or videos: a folder of frames or a GIF, whose
frame count must be a multiple of the temporal factor (4). Codes are .npy files: [h, w]
for an image, [T/4, h, w] for a video. Images decode to PNG, videos to a GIF plus one PNG
per frame. Without --model the embedded untrained demo model is used.

Every option, every input (read whole) and every output is checked before the model is
loaded or a file written; each output appears complete or not at all.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from . import media
from .cli import UserError, arg_type, check_outputs, int_at_least, progress
from .weights import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def register(subparsers) -> None:
    """Add the `vq` command group to the `emu3` parser."""
    vq = subparsers.add_parser("vq", help="vision tokenizer: images and videos <-> codes",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = vq.add_subparsers(dest="vq_command", metavar="COMMAND")
    sub.required = True

    def common(p, batch=True):
        p.add_argument("--model", metavar="DIR",
                       help="vision tokenizer checkpoint directory (default: the embedded demo model)")
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

    fps_type = arg_type(lambda text: media.check_fps(float(text)))

    enc = sub.add_parser("encode", help="images/videos -> codes (.npy)")
    enc.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, frame folder or GIF")
    common(enc)
    enc.set_defaults(func=run_encode)

    dec = sub.add_parser("decode", help="codes (.npy) -> PNG image, or GIF + PNG frames for a video")
    dec.add_argument("inputs", nargs="+", metavar="CODES", help=".npy file: [h, w] image or [t, h, w] video")
    common(dec, batch=False)
    dec.add_argument("--fps", type=fps_type, default=8.0, help="GIF frame rate, 0.01 to 100 (default: 8)")
    dec.set_defaults(func=run_decode)

    rec = sub.add_parser("reconstruct", help="encode then decode: <name>_recon.png or .gif")
    rec.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, frame folder or GIF")
    common(rec)
    rec.add_argument("--fps", type=fps_type, default=8.0, help="GIF frame rate, 0.01 to 100 (default: 8)")
    rec.add_argument("--save-codes", action="store_true", help="also write the codes as <name>.npy")
    rec.set_defaults(func=run_reconstruct)


# ---- the model and its processor ------------------------------------------------------------

AUTO_JIT_MIN_CH = 128  # `--jit auto` compiles models at least this wide (the real one: 256) on every device


class _Tokenizer:
    """The VQ model with its image processor; numpy in, numpy out.

    The config and processor are read first (cheap, enough to validate inputs); the
    weights are loaded on first use.
    """

    def __init__(self, model_dir: str | None, jit: str = "auto"):
        from .config import Emu3VQConfig
        from .processor import Emu3ImageProcessor

        if model_dir is None:
            from .tiny import default_model_dir

            model_dir = default_model_dir()
        self.path = Path(model_dir)
        if not self.path.is_dir():
            raise UserError(f"model directory not found: {self.path}")
        if not (self.path / "config.json").is_file():
            raise UserError(f"{self.path} has no config.json: not a vision tokenizer checkpoint")
        self.config = Emu3VQConfig.from_json_file(self.path / "config.json")
        self.processor = Emu3ImageProcessor.from_pretrained(self.path)
        self.factor = self.config.spatial_factor
        self.frames_per_code = self.config.temporal_downsample_factor
        self.codebook_size = self.config.codebook_size
        if self.processor.spatial_factor != self.factor:
            raise UserError(f"{self.path}: preprocessor_config.json has spatial_factor "
                            f"{self.processor.spatial_factor} but the model downsamples by {self.factor}")
        if (self.config.in_channels, self.config.out_channels) != (3, 3):
            raise UserError(f"{self.path / 'config.json'}: in_channels and out_channels must be 3 "
                            f"(RGB) for images, got {self.config.in_channels} and {self.config.out_channels}")
        self.jit = jit
        self._model = None

    @property
    def model(self):
        if self._model is None:
            from . import device
            from .model import Emu3VQModel

            jit = self.jit == "on"
            if self.jit == "auto":
                # Compiling costs seconds per input size and pays off at once for real-size
                # models (256x256 on CPU: 3.2 s compiled vs 8.8 s eager, first call 7.4 s); smaller
                # ones are compiled only where the device policy says so (not on CPU).
                jit = device.policy().jit_small_models or self.config.ch >= AUTO_JIT_MIN_CH
            self._model = Emu3VQModel.from_pretrained(self.path, jit=jit)
        return self._model

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        return _to_numpy(self.model.encode(pixels)).astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return _to_numpy(self.model.decode(codes))


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
                            f"({', '.join(IMAGE_SUFFIXES)}), a folder of frames or a .gif")
    _check_names([i.name for i in inputs], paths)
    return inputs


def _read_inputs(inputs: list[_Input], tokenizer: _Tokenizer) -> None:
    """Read every input whole before any work: what encoding would fail on (corrupt data, an
    unsupported image mode, a size the processor refuses, a frame count or frames of different
    sizes) fails here, so that no output of an earlier input is written first."""
    for item in inputs:
        try:
            if item.kind == "video":
                n, (width, height) = media.check_video(item.path)
                t = tokenizer.frames_per_code
                if n % t:
                    raise UserError(f"video {item.path} has {n} frames; the tokenizer needs a multiple "
                                    f"of {t} (drop {n % t} or add {t - n % t})")
                tokenizer.processor.size_for(height, width)
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


def _decoded_paths(out_dir: Path, name: str, video: bool) -> tuple[list[Path], list[Path]]:
    """(files, folders) decoding writes: ([name.png], []) or ([name.gif], [name_frames])."""
    if video:
        return [out_dir / f"{name}.gif"], [out_dir / f"{name}_frames"]
    return [out_dir / f"{name}.png"], []


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
                   fps: float) -> list[Path]:
    """Decode one image's [h, w] or one video's [t, h, w] codes and write PNG or GIF + frames."""
    pixels = tokenizer.decode(codes[None])[0]
    images = tokenizer.processor.postprocess(pixels)
    (file,), folders = _decoded_paths(out_dir, name, video=codes.ndim == 3)
    if codes.ndim == 2:
        media.save_png(images[0], file)
    else:
        media.save_frames(images, folders[0])
        media.save_gif(images, file, fps=fps)
    return [file, *folders]


def _load_codes(path: Path, tokenizer: _Tokenizer) -> np.ndarray:
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
    return codes.astype(np.int64)


# ---- commands ---------------------------------------------------------------------------------

def run_encode(args) -> None:
    tokenizer = _Tokenizer(args.model, args.jit)
    inputs = _inputs(args.inputs)
    out_dir = Path(args.output_dir)
    check_outputs([out_dir / f"{i.name}.npy" for i in inputs], args.inputs, args.overwrite)
    _read_inputs(inputs, tokenizer)

    def save(item, codes):
        path = out_dir / f"{item.name}.npy"
        atomic_write(path, lambda f: np.save(f, codes))
        print(path)

    _encode_all(tokenizer, inputs, args.batch_size, save)


def run_decode(args) -> None:
    tokenizer = _Tokenizer(args.model, args.jit)
    out_dir = Path(args.output_dir)
    paths = [Path(p) for p in args.inputs]
    all_codes = [_load_codes(p, tokenizer) for p in paths]
    names = [p.stem for p in paths]
    _check_names(names, args.inputs)
    files, folders = [], []
    for name, codes in zip(names, all_codes):
        more_files, more_folders = _decoded_paths(out_dir, name, video=codes.ndim == 3)
        files += more_files
        folders += more_folders
    check_outputs(files, args.inputs, args.overwrite, directories=folders)
    for name, codes in progress(list(zip(names, all_codes)), desc="decode"):
        for path in _write_decoded(tokenizer, codes, out_dir, name, args.fps):
            print(path)


def run_reconstruct(args) -> None:
    tokenizer = _Tokenizer(args.model, args.jit)
    inputs = _inputs(args.inputs)
    out_dir = Path(args.output_dir)
    files, folders = [], []
    for i in inputs:
        more_files, more_folders = _decoded_paths(out_dir, f"{i.name}_recon", i.kind == "video")
        files += more_files
        folders += more_folders
    if args.save_codes:
        files += [out_dir / f"{i.name}.npy" for i in inputs]
    check_outputs(files, args.inputs, args.overwrite, directories=folders)
    _read_inputs(inputs, tokenizer)

    def save(item, codes):
        if args.save_codes:
            path = out_dir / f"{item.name}.npy"
            atomic_write(path, lambda f: np.save(f, codes))
            print(path)
        for path in _write_decoded(tokenizer, codes, out_dir, f"{item.name}_recon", args.fps):
            print(path)

    _encode_all(tokenizer, inputs, args.batch_size, save)
