"""`emu3 generate image|answer|video-continue`: text to image, questions about an image, videos.

Without --model the embedded demo model is used: a tiny LM and vision tokenizer with untrained
random weights, built on first use into the user cache; the output is noise, the pipeline is
the real one. With --model DIR (an Emu3-Gen/-Chat checkpoint directory holding the tokenizer
files), the vision tokenizer comes from --vq DIR, or from DIR itself for an -hf checkpoint.
Every input, output and option is checked before any model is loaded (the size of what is
generated against the model's context too); an existing output is replaced only with
--overwrite. Output files appear only when complete (written to a temporary file, then renamed).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from emu3_vq import media
from emu3_vq.cli import UserError, arg_type, check_outputs, int_at_least, progress


def _guidance_scale(text: str) -> float:
    """--cfg: a finite number, by the API's rule (imported here, on use: building the `emu3`
    parser must not import MindSpore)."""
    from .guidance import check_scale

    return check_scale(float(text), "the guidance scale")


def register(subparsers) -> None:
    """Add the `generate` command group to the `emu3` parser."""
    gen = subparsers.add_parser("generate",
                                help="text to image, image question answering, video continuation",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = gen.add_subparsers(dest="generate_command", metavar="COMMAND")
    sub.required = True

    def models(p):
        p.add_argument("--model", metavar="DIR",
                       help="Emu3 LM checkpoint directory with its tokenizer (default: the embedded demo "
                            "model, untrained random weights: the output is noise)")
        p.add_argument("--vq", metavar="DIR",
                       help="vision tokenizer checkpoint directory (default: the demo one without --model, "
                            "the --model directory for an -hf checkpoint)")

    def sampling(p, top_k=2048):
        p.add_argument("--seed", type=int_at_least(0), default=None,
                       help="random seed, an integer >= 0: the same seed gives the same output")
        p.add_argument("--top-k", type=int_at_least(0), default=top_k, metavar="K",
                       help=f"sample among the K most likely visual tokens (default: {top_k}; 0: all)")

    def overwrite(p):
        p.add_argument("--overwrite", action="store_true", help="replace existing output files")

    img = sub.add_parser("image", help="generate an image from a text prompt (PNG)")
    img.add_argument("prompt", metavar="PROMPT", help="what the image shows")
    img.add_argument("--ratio", default="1:1", metavar="W:H",
                     help="aspect ratio, width:height (default: 1:1)")
    img.add_argument("--area", type=int_at_least(1), default=None, metavar="PIXELS",
                     help="image area in pixels (default: the model's image_area, 720*720 for Emu3-Gen)")
    img.add_argument("--cfg", type=arg_type(_guidance_scale), default=3.0, metavar="SCALE",
                     help="classifier-free guidance scale; 1 turns it off (default: 3.0)")
    img.add_argument("--negative", default=None, metavar="TEXT",
                     help="negative prompt for guidance (default: the original Emu3 one)")
    img.add_argument("--unbatched-cfg", action="store_true",
                     help="run the guidance branch as a second forward over its own cache (the original "
                          "way) instead of in the same batch")
    sampling(img)
    img.add_argument("--out", default="image.png", metavar="PATH", help="output PNG (default: image.png)")
    overwrite(img)
    models(img)
    img.set_defaults(func=run_image)

    ans = sub.add_parser("answer", help="answer a question about an image (greedy)")
    ans.add_argument("image", metavar="IMAGE", help="image file")
    ans.add_argument("question", metavar="QUESTION")
    ans.add_argument("--max-new-tokens", type=int_at_least(1), default=1024, metavar="N",
                     help="longest answer in tokens (default: 1024)")
    models(ans)
    ans.set_defaults(func=run_answer)

    vid = sub.add_parser("video-continue", help="continue a video by N frames (GIF + PNG frames)")
    vid.add_argument("frames", metavar="FRAMES", help="folder of frame images or an animated GIF; "
                                                     "a multiple of 4 frames")
    vid.add_argument("--frames", dest="n_frames", type=int, required=True, metavar="N",
                     help="number of new frames, a multiple of 4")
    vid.add_argument("--prompt", default="", help="optional text describing the video")
    sampling(vid)
    vid.add_argument("--fps", type=arg_type(lambda text: media.check_fps(float(text))), default=8.0,
                     help="GIF frame rate, 0.01 to 100 (default: 8)")
    vid.add_argument("--out", default="continued.gif", metavar="PATH",
                     help="output GIF of the new frames; the frames also go to <PATH stem>_frames/ "
                          "(default: continued.gif)")
    overwrite(vid)
    models(vid)
    vid.set_defaults(func=run_video)


# ---- models -------------------------------------------------------------------------------------

def _resolve_dirs(model_dir: str | None, vq_dir: str | None) -> tuple[Path, Path]:
    if model_dir is None:
        if vq_dir is not None:
            raise UserError("--vq needs --model: the demo LM only fits the demo vision tokenizer")
        from .demo import default_model_dirs

        return default_model_dirs()
    lm = Path(model_dir)
    if not (lm / "config.json").is_file():
        raise UserError(f"{lm} is not a checkpoint directory (no config.json)")
    if vq_dir is None:
        try:
            config = json.loads((lm / "config.json").read_text())
        except ValueError as exc:
            raise UserError(f"{lm / 'config.json'} is not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise UserError(f"{lm / 'config.json'}: config must be a JSON object, got {type(config).__name__}")
        if "vq_config" not in config:
            raise UserError(f"{lm} holds no vision tokenizer: pass --vq DIR (e.g. BAAI/Emu3-VisionTokenizer)")
        return lm, lm
    vq = Path(vq_dir)
    if not (vq / "config.json").is_file():
        raise UserError(f"{vq} is not a vision tokenizer directory (no config.json)")
    return lm, vq


@dataclass
class Checkpoints:
    """What the checks of a command need, read without loading any weights: the directories,
    the LM config, the vision tokenizer's frames per latent frame, and a processor (tokenizer and
    image processor) without its VQ model."""

    lm: Path
    vq: Path
    config: object  # emu3_lm.config.Emu3LMConfig
    temporal_factor: int
    processor: object  # emu3_lm.processor.Emu3Processor, vq_model None


def read_checkpoints(model_dir: str | None = None, vq_dir: str | None = None) -> Checkpoints:
    """Configs and tokenizer of the checkpoints (or of the embedded demo model), no weights."""
    from emu3_lm.config import Emu3LMConfig
    from emu3_lm.processor import Emu3Processor
    from emu3_lm.tokenizer import Emu3Tokenizer
    from emu3_vq.config import Emu3VQConfig
    from emu3_vq.processor import Emu3ImageProcessor

    lm, vq = _resolve_dirs(model_dir, vq_dir)
    config = Emu3LMConfig.from_json_file(lm / "config.json")
    vq_config = Emu3VQConfig.from_json_file(vq / "config.json")
    processor = Emu3Processor(Emu3ImageProcessor.from_pretrained(vq), None, Emu3Tokenizer.from_pretrained(lm),
                              image_area=config.image_area)
    return Checkpoints(lm, vq, config, int(vq_config.temporal_downsample_factor), processor)


def load_models(checkpoints: Checkpoints):
    """(model, processor): the weights of checked checkpoints."""
    from emu3_lm.model import Emu3ForCausalLM
    from emu3_lm.processor import Emu3Processor
    from emu3_vq.model import Emu3VQModel

    model = Emu3ForCausalLM.from_pretrained(checkpoints.lm)
    # compiled: even for a single decode on CPU, compiling and running the graph took a
    # quarter of the time of running op by op (tiny VQ, a 2-latent-frame video: 6.8 s vs 24 s)
    vq_model = Emu3VQModel.from_pretrained(checkpoints.vq, jit=True)
    p = checkpoints.processor
    return model, Emu3Processor(p.image_processor, vq_model, p.tokenizer, image_area=model.config.image_area)


def load(model_dir: str | None = None, vq_dir: str | None = None):
    """(model, processor) from checkpoint directories, or the embedded demo model."""
    return load_models(read_checkpoints(model_dir, vq_dir))


# ---- progress -----------------------------------------------------------------------------------

class _RowsStream:
    """A stderr stand-in that appends the image rows done to each line `progress` writes."""

    def __init__(self, stream):
        self.stream = stream
        self.suffix = ""

    def isatty(self) -> bool:
        return hasattr(self.stream, "isatty") and self.stream.isatty()

    def write(self, text: str) -> None:
        end = "\n" if text.endswith("\n") else ""
        self.stream.write(text[: len(text) - len(end)] + self.suffix + end)

    def flush(self) -> None:
        self.stream.flush()


class ProgressBar:
    """`emu3_vq.cli.progress` over generated positions (tokens/s), plus image rows done.

    Use as a `loop.Progress` callback; call `close()` when generation ends.
    """

    def __init__(self, desc: str, rows_label: str = "rows", stream=None):
        self.out = _RowsStream(stream or sys.stderr)
        self.rows_label = rows_label
        self.steps = 0
        self._stop = False
        self._bar = None
        self.desc = desc

    def _ticks(self):
        while not self._stop:
            yield None

    def __call__(self, p) -> None:
        if self._bar is None:
            self._bar = progress(self._ticks(), total=p.steps, desc=self.desc, unit="tok", stream=self.out)
        self.out.suffix = f" | {self.rows_label} {p.rows_done}/{p.rows}"
        while self.steps < p.step:
            next(self._bar)
            self.steps += 1

    def close(self) -> None:
        if self._bar is not None:
            self._stop = True
            next(self._bar, None)  # counts the last position and prints the summary line
            self._bar = None


# ---- commands -----------------------------------------------------------------------------------
#
# Everything is checked before any model is loaded or any file written: each option when it is
# parsed (its argparse type), then in each command its inputs, its outputs (emu3_vq.cli.
# check_outputs: the overwrite policy of every `emu3` command), then, from the checkpoints'
# configs and tokenizer, the size of what is generated against the model's context. The API
# functions apply the same rules again (the same functions) when they are called.

def _check_out(path: str, suffix: str, overwrite: bool, inputs=(), directories=()) -> Path:
    """--out: its suffix, then the overwrite policy and writability of every output."""
    out = Path(path)
    if out.suffix.lower() != suffix:
        raise UserError(f"--out {out}: expected a {suffix} file name")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory")
    check_outputs([out], inputs=inputs, overwrite=overwrite, option="--out", directories=directories)
    return out


def run_image(args) -> None:
    from emu3_lm.processor import parse_ratio

    from .image import NEGATIVE_PROMPT, POSITIVE_PROMPT, generate_image, image_prompts

    parse_ratio(args.ratio)
    out = _check_out(args.out, ".png", args.overwrite)
    checkpoints = read_checkpoints(args.model, args.vq)
    negative = args.negative or NEGATIVE_PROMPT
    image_prompts(checkpoints.config, checkpoints.processor, [args.prompt], [args.ratio], args.area, args.cfg,
                  negative, POSITIVE_PROMPT)  # fits the model's context
    model, processor = load_models(checkpoints)
    h, w = processor.generation_size(args.ratio, args.area or model.config.image_area)
    bar = ProgressBar(f"image {h}x{w} tokens")
    try:
        image = generate_image(model, processor, args.prompt, ratio=args.ratio, image_area=args.area,
                               cfg_scale=args.cfg, negative_prompt=negative, top_k=args.top_k, seed=args.seed,
                               batched_cfg=not args.unbatched_cfg, progress=bar)[0]
    finally:
        bar.close()
    media.save_png(image, out)
    print(out)


def run_answer(args) -> None:
    from .vqa import answer

    image = media.load_image(args.image)  # a file, readable, decoded: before loading models
    model, processor = load(args.model, args.vq)
    bar = ProgressBar("answer", rows_label="done")
    try:
        text = answer(model, processor, image, args.question, max_new_tokens=args.max_new_tokens,
                      progress=bar)
    finally:
        bar.close()
    print(text)


def run_video(args) -> None:
    from .video import check_continuation, continue_video

    if args.n_frames < 4 or args.n_frames % 4:
        raise UserError(f"--frames must be a positive multiple of 4, got {args.n_frames}")
    source = Path(args.frames)
    if not source.exists():
        raise FileNotFoundError(f"frames not found: {source}")
    count, size = media.check_video(source)  # every frame read, one size
    if count % 4:
        raise UserError(f"{source} has {count} frames; video continuation needs a multiple of 4 "
                        f"(drop {count % 4} or add {4 - count % 4})")
    out = Path(args.out)
    frames_dir = out.parent / f"{out.stem}_frames"
    _check_out(args.out, ".gif", args.overwrite, inputs=[source], directories=[frames_dir])
    checkpoints = read_checkpoints(args.model, args.vq)
    check_continuation(checkpoints.config, checkpoints.processor, size, count, args.n_frames,
                       checkpoints.temporal_factor, args.prompt)  # fits the model's context
    model, processor = load_models(checkpoints)
    frames = media.load_frames(source)
    bar = ProgressBar(f"video +{args.n_frames} frames")
    try:
        new = continue_video(model, processor, frames, args.n_frames, args.prompt, top_k=args.top_k,
                             seed=args.seed, progress=bar)
    finally:
        bar.close()
    media.save_frames(new, frames_dir)
    media.save_gif(new, out, fps=args.fps)  # last: the GIF there means the frames are complete
    print(out)
    print(frames_dir)
