"""`emu3 vq encode|decode|reconstruct`: images and videos to codes and back.

Inputs: image files (several form a batch), or videos: a folder of frames or a GIF, whose
frame count must be a multiple of the temporal factor (4). Codes are .npy files: [h, w]
for an image, [T/4, h, w] for a video. Images decode to PNG, videos to a GIF plus one PNG
per frame. Without --model the embedded untrained demo model is used.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from . import media
from .cli import UserError, progress
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
            p.add_argument("--batch-size", type=int, default=4, metavar="N",
                           help="images of the same size encoded together (default: 4)")

    enc = sub.add_parser("encode", help="images/videos -> codes (.npy)")
    enc.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, frame folder or GIF")
    common(enc)
    enc.set_defaults(func=run_encode)

    dec = sub.add_parser("decode", help="codes (.npy) -> PNG image, or GIF + PNG frames for a video")
    dec.add_argument("inputs", nargs="+", metavar="CODES", help=".npy file: [h, w] image or [t, h, w] video")
    common(dec, batch=False)
    dec.add_argument("--fps", type=float, default=8.0, help="GIF frame rate (default: 8)")
    dec.set_defaults(func=run_decode)

    rec = sub.add_parser("reconstruct", help="encode then decode: <name>_recon.png or .gif")
    rec.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, frame folder or GIF")
    common(rec)
    rec.add_argument("--fps", type=float, default=8.0, help="GIF frame rate (default: 8)")
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
    def __init__(self, path: Path, kind: str, size: tuple[int, int] | None = None):
        self.path, self.kind, self.size = path, kind, size  # size: target (height, width)
        self.name = path.stem if path.is_file() else path.name


def _check_inputs(paths: list[str], tokenizer: _Tokenizer) -> list[_Input]:
    """Validate every input before any work: existence, readability, size and frame count."""
    inputs = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UserError(f"input not found: {path}")
        try:
            if media.is_video_path(path):
                n, (width, height) = media.video_info(path)
                t = tokenizer.frames_per_code
                if n % t:
                    raise UserError(f"video {path} has {n} frames; the tokenizer needs a multiple of {t} "
                                    f"(drop {n % t} or add {t - n % t})")
                tokenizer.processor.size_for(height, width)
                inputs.append(_Input(path, "video"))
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                width, height = media.image_size(path)
                inputs.append(_Input(path, "image", tokenizer.processor.size_for(height, width)))
            else:
                raise UserError(f"unsupported input {path}: expected an image "
                                f"({', '.join(IMAGE_SUFFIXES)}), a folder of frames or a .gif")
        except ValueError as exc:  # unreadable file, too small, too elongated
            message = str(exc)
            raise UserError(message if str(path) in message else f"{path}: {message}") from None
    _check_names([i.name for i in inputs], paths)
    return inputs


def _check_names(names: list[str], paths: list[str]) -> None:
    seen = {}
    for name, path in zip(names, paths):
        if name in seen:
            raise UserError(f"inputs {seen[name]} and {path} would write the same output name {name!r}")
        seen[name] = path


def _check_outputs(outputs: list[Path], inputs: list[str], overwrite: bool) -> None:
    """Never write over an input; write over other existing files only with --overwrite."""
    resolved = {Path(p).resolve() for p in inputs}
    for out in outputs:
        if out.resolve() in resolved:
            raise UserError(f"output {out} would overwrite an input; choose another --output-dir")
    existing = [str(out) for out in outputs if out.exists()]
    if existing and not overwrite:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise UserError(f"{shown} already exist{'s' if len(existing) == 1 else ''}; "
                        f"pass --overwrite to replace, or choose another --output-dir")


def _decoded_paths(out_dir: Path, name: str, video: bool) -> list[Path]:
    if video:
        return [out_dir / f"{name}.gif", out_dir / f"{name}_frames"]
    return [out_dir / f"{name}.png"]


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
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
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
    paths = _decoded_paths(out_dir, name, video=codes.ndim == 3)
    if codes.ndim == 2:
        media.save_png(images[0], paths[0])
    else:
        media.save_frames(images, paths[1])
        media.save_gif(images, paths[0], fps=fps)
    return paths


def _load_codes(path: Path, codebook_size: int) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"codes file not found: {path}")
    try:
        codes = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"cannot read codes from {path}: {exc}") from None
    if not isinstance(codes, np.ndarray) or codes.dtype.kind not in "iu":
        raise UserError(f"{path}: codes must be an integer array, got {getattr(codes, 'dtype', type(codes))}")
    if codes.ndim not in (2, 3) or 0 in codes.shape:
        raise UserError(f"{path}: codes must be [h, w] (image) or [t, h, w] (video), got shape {codes.shape}")
    if codes.min() < 0 or codes.max() >= codebook_size:
        raise UserError(f"{path}: codes must lie in [0, {codebook_size}), found {codes.min()}..{codes.max()}")
    return codes.astype(np.int64)


# ---- commands ---------------------------------------------------------------------------------

def run_encode(args) -> None:
    tokenizer = _Tokenizer(args.model, args.jit)
    inputs = _check_inputs(args.inputs, tokenizer)
    out_dir = Path(args.output_dir)
    _check_outputs([out_dir / f"{i.name}.npy" for i in inputs], args.inputs, args.overwrite)

    def save(item, codes):
        path = out_dir / f"{item.name}.npy"
        atomic_write(path, lambda f: np.save(f, codes))
        print(path)

    _encode_all(tokenizer, inputs, args.batch_size, save)


def run_decode(args) -> None:
    tokenizer = _Tokenizer(args.model, args.jit)
    out_dir = Path(args.output_dir)
    paths = [Path(p) for p in args.inputs]
    all_codes = [_load_codes(p, tokenizer.codebook_size) for p in paths]
    names = [p.stem for p in paths]
    _check_names(names, args.inputs)
    outputs = [p for name, codes in zip(names, all_codes)
               for p in _decoded_paths(out_dir, name, video=codes.ndim == 3)]
    _check_outputs(outputs, args.inputs, args.overwrite)
    for name, codes in progress(list(zip(names, all_codes)), desc="decode"):
        for path in _write_decoded(tokenizer, codes, out_dir, name, args.fps):
            print(path)


def run_reconstruct(args) -> None:
    tokenizer = _Tokenizer(args.model, args.jit)
    inputs = _check_inputs(args.inputs, tokenizer)
    out_dir = Path(args.output_dir)
    outputs = [p for i in inputs for p in _decoded_paths(out_dir, f"{i.name}_recon", i.kind == "video")]
    if args.save_codes:
        outputs += [out_dir / f"{i.name}.npy" for i in inputs]
    _check_outputs(outputs, args.inputs, args.overwrite)

    def save(item, codes):
        if args.save_codes:
            path = out_dir / f"{item.name}.npy"
            atomic_write(path, lambda f: np.save(f, codes))
            print(path)
        for path in _write_decoded(tokenizer, codes, out_dir, f"{item.name}_recon", args.fps):
            print(path)

    _encode_all(tokenizer, inputs, args.batch_size, save)

