"""`emu3 generate image|answer|video-continue`: text to image, questions about an image, videos.

Without --model the default model is used (`emu3_vq.defaults`: the package emu3-shapes, a
small Emu3 trained with emu3-train on coloured shapes at 32x32 pixels; docs/shapes.md).
--model names an Emu3-Gen/-Chat checkpoint holding the tokenizer files, a local
directory or a hub repo id (org/name; --revision picks a branch, tag or commit); the vision
tokenizer comes from --vq, or from the model itself for an -hf checkpoint. Defaults the
checkpoint's generation_config.json holds (guidance_scale, top_k, top_p, temperature,
max_new_tokens, do_sample) replace the built-in ones; options given win.

Every input, output and option is checked before any weights are loaded (the size of what is
generated against the model's context too, from the configs and the tokenizer); an existing
output is replaced only with --overwrite. Output files appear only when complete (written to a
temporary file, then renamed) and say what made them: the prompt, the seed and the settings,
the checkpoints and the package versions (PNG text chunks; the JSON comment of a GIF or MP4;
emu3_vq.media.read_metadata reads them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emu3_vq import media
from emu3_vq.cli import UserError, add_runtime_options, apply_runtime, arg_type, check_outputs, int_at_least


def _default(key: str, value) -> str:
    """How a help text says where a default comes from."""
    return f"default: the checkpoint's generation_config.json {key}, else {value}"


def _guidance_scale(text: str) -> float:
    """--cfg: a finite number, by the API's rule (imported here, on use: building the `emu3`
    parser must not import MindSpore)."""
    from .guidance import check_scale

    return check_scale(float(text), "the guidance scale")


def _temperature(text: str) -> float:
    from .sampling import check_temperature

    return check_temperature(float(text), "the temperature")


def _top_p(text: str) -> float:
    from .sampling import check_top_p

    return check_top_p(float(text), "top-p")


def register(subparsers) -> None:
    """Add the `generate` command group to the `emu3` parser."""
    gen = subparsers.add_parser("generate",
                                help="text to image, image question answering, video continuation",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = gen.add_subparsers(dest="generate_command", metavar="COMMAND")
    sub.required = True

    def models(p):
        p.add_argument("--model", metavar="DIR|ORG/NAME",
                       help="Emu3 LM checkpoint with its tokenizer: a directory or a hub repo id (default: the "
                            "default model, emu3-shapes: a small Emu3 trained on coloured shapes)")
        p.add_argument("--vq", metavar="DIR|ORG/NAME",
                       help="vision tokenizer checkpoint: a directory or a hub repo id (default: the default "
                            "model's without --model, the --model itself for an -hf checkpoint)")
        p.add_argument("--revision", metavar="REV", default=None,
                       help="branch, tag or commit of a hub repo id --model (default: its main branch)")
        add_runtime_options(p)

    def seed(p):
        p.add_argument("--seed", type=int_at_least(0), default=None,
                       help="random seed, an integer >= 0: the same seed gives the same output (default: "
                            "drawn, and printed to stderr)")

    def top_k(p, default=2048):
        p.add_argument("--top-k", type=int_at_least(0), default=None, metavar="K",
                       help=f"sample among the K most likely visual tokens ({_default('top_k', default)}; 0: all)")

    def overwrite(p):
        p.add_argument("--overwrite", action="store_true", help="replace existing output files")

    img = sub.add_parser("image", help="generate images from text prompts (PNG)")
    img.add_argument("prompt", metavar="PROMPT", nargs="?", default=None,
                     help="what the image shows (or --prompts-file)")
    img.add_argument("--prompts-file", metavar="FILE", default=None,
                     help="a UTF-8 text file of prompts, one per line (blank lines skipped), instead of PROMPT")
    img.add_argument("--num-images", type=int_at_least(1), default=1, metavar="N",
                     help="images per prompt, generated as one batch (default: 1)")
    img.add_argument("--ratio", default="1:1", metavar="W:H",
                     help="aspect ratio, width:height (default: 1:1)")
    img.add_argument("--area", type=int_at_least(1), default=None, metavar="PIXELS",
                     help="image area in pixels (default: the model's image_area, 720*720 for Emu3-Gen)")
    img.add_argument("--cfg", type=arg_type(_guidance_scale), default=None, metavar="SCALE",
                     help=f"classifier-free guidance scale; 1 turns it off ({_default('guidance_scale', 3.0)})")
    img.add_argument("--negative", default=None, metavar="TEXT",
                     help="negative prompt for guidance (default: the model's generation_config.json, else "
                          "the original Emu3 one)")
    img.add_argument("--unbatched-cfg", action="store_true",
                     help="run the guidance branch as a second forward over its own cache (the original "
                          "way) instead of in the same batch")
    seed(img)
    top_k(img)
    img.add_argument("--out", default="image.png", metavar="PATH",
                     help="output PNG (default: image.png); several images go to PATH-0.png, PATH-1.png, ... "
                          "(prompts in order, N images each; image j has seed SEED + j)")
    overwrite(img)
    models(img)
    img.set_defaults(func=run_image)

    ans = sub.add_parser("answer", help="answer a question about an image (greedy unless --temperature)")
    ans.add_argument("image", metavar="IMAGE", help="image file")
    ans.add_argument("question", metavar="QUESTION")
    ans.add_argument("--max-new-tokens", type=int_at_least(1), default=None, metavar="N",
                     help=f"longest answer in tokens ({_default('max_new_tokens', 1024)})")
    ans.add_argument("--temperature", type=arg_type(_temperature), default=None, metavar="T",
                     help="sample at temperature T > 0 (default: greedy, unless the checkpoint's "
                          "generation_config.json says do_sample: then its temperature, else 1)")
    ans.add_argument("--top-p", type=arg_type(_top_p), default=None, metavar="P",
                     help="when sampling, among the most likely tokens of total probability P (default: 1, all)")
    ans.add_argument("--top-k", type=int_at_least(0), default=None, metavar="K",
                     help="when sampling, among the K most likely tokens (default: 0, all)")
    seed(ans)
    ans.add_argument("--no-stream", action="store_true",
                     help="print the answer when it is complete, with a progress bar, instead of as it is produced")
    models(ans)
    ans.set_defaults(func=run_answer)

    vid = sub.add_parser("video-continue", help="continue a video by N frames (GIF or MP4, and PNG frames)")
    vid.add_argument("frames", metavar="FRAMES", help="a folder of frame images, an animated GIF or an MP4; "
                                                     "a multiple of 4 frames")
    vid.add_argument("--frames", dest="n_frames", type=int, required=True, metavar="N",
                     help="number of new frames, a multiple of 4")
    vid.add_argument("--prompt", default="", help="optional text describing the video")
    seed(vid)
    top_k(vid)
    vid.add_argument("--fps", type=arg_type(lambda text: media.check_fps(float(text))), default=8.0,
                     help="frame rate of the output, 0.01 to 100 (default: 8)")
    vid.add_argument("--out", default="continued.gif", metavar="PATH",
                     help="output video of the new frames, .gif or .mp4 (MP4 needs the extra video of "
                          "emu3-vq); the frames also go to <PATH stem>_frames/ (default: continued.gif)")
    overwrite(vid)
    models(vid)
    vid.set_defaults(func=run_video)


# ---- shared steps --------------------------------------------------------------------------------
#
# Everything is checked before any model is loaded or any file written: each option when it is
# parsed (its argparse type), then in each command its inputs, its outputs (emu3_vq.cli.
# check_outputs: the overwrite policy of every `emu3` command), then, from the checkpoints'
# configs, tokenizer and generation_config.json (Emu3Pipeline.from_pretrained(lazy=True)), the
# request with its defaults and the size of what is generated against the model's context
# (Emu3Pipeline.check_image / check_answer / check_video); the weights load after that. The
# pipeline applies the same rules again (the same functions) when it is called.

def _pipeline(args):
    """The checked request's pipeline, weights not loaded yet: --vq/--revision without --model
    refused, the device selected (--device, --threads), the configs read."""
    if args.model is None:
        if args.vq is not None:
            raise UserError("--vq needs --model: the default LM only fits its own vision tokenizer")
        if args.revision is not None:
            raise UserError("--revision needs --model naming a hub repo id (org/name)")
    apply_runtime(args)
    from .pipeline import Emu3Pipeline

    if args.model is None:
        from emu3_vq.defaults import note

        note(quiet=False)
    return Emu3Pipeline.from_pretrained(args.model, args.vq, args.dtype, revision=args.revision, lazy=True)


def _seed(seed: int | None) -> int:
    """--seed, or a drawn one, printed to stderr so that the output can be made again."""
    if seed is None:
        from .pipeline import draw_seed

        seed = draw_seed()
        print(f"emu3: seed {seed} (pass --seed {seed} to reproduce)", file=sys.stderr)
    return seed


class _Bar:
    """A tqdm bar on stderr as a `loop.Progress` callback: positions generated (tok/s) and image
    rows (or sequences) done. Use as a context manager: the bar closes with its last line."""

    def __init__(self, desc: str, rows: str = "rows"):
        self.desc, self.rows, self.bar = desc, rows, None

    def __call__(self, p) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=p.steps, desc=self.desc, unit="tok", file=sys.stderr, dynamic_ncols=True)
        self.bar.set_postfix_str(f"{self.rows} {p.rows_done}/{p.rows}", refresh=False)
        self.bar.update(p.step - self.bar.n)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_out(path: str, suffixes: tuple[str, ...]) -> Path:
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise UserError(f"--out {out}: expected a {' or '.join(suffixes)} file name")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory")
    return out


# ---- commands -----------------------------------------------------------------------------------

def _prompts(args) -> list[str]:
    """PROMPT, or the lines of --prompts-file (stripped, blank ones skipped): exactly one of them."""
    if (args.prompt is None) == (args.prompts_file is None):
        raise UserError("give either PROMPT or --prompts-file FILE")
    if args.prompt is not None:
        prompts = [args.prompt]
    else:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts-file {path}: no such file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"--prompts-file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
        if not prompts:
            raise UserError(f"--prompts-file {path} holds no prompt (one per line)")
    if any("\0" in p for p in prompts):
        raise UserError("a prompt contains a NUL character")
    return prompts


def image_paths(out: Path, count: int) -> list[Path]:
    """Where `count` images go: `out` itself for one, else out-0.png, out-1.png, ... beside it."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{j}{out.suffix}") for j in range(count)]


def run_image(args) -> None:
    from emu3_lm.processor import parse_ratio

    parse_ratio(args.ratio)
    prompts = _prompts(args)
    n = args.num_images
    paths = image_paths(_check_out(args.out, (".png",)), len(prompts) * n)
    check_outputs(paths, overwrite=args.overwrite, option="--out")
    pipe = _pipeline(args)
    options = dict(ratio=args.ratio, image_area=args.area, cfg_scale=args.cfg, negative_prompt=args.negative,
                   num_images=n, top_k=args.top_k, batched_cfg=not args.unbatched_cfg)
    _, settings = pipe.check_image(prompts, **options)  # defaults, and the size against the context
    seed = _seed(args.seed)
    pipe.load()
    h, w = pipe.processor.generation_size(settings.ratio, settings.image_area)
    for k, prompt in enumerate(prompts):
        which = f" {k + 1}/{len(prompts)}" if len(prompts) > 1 else ""
        with _Bar(f"image{which} {h}x{w} tokens") as bar:
            out = pipe(prompt, seed=seed + k * n, progress=bar, **options)
        for i, image in enumerate(out.images):  # written as each prompt's batch is done
            path = paths[k * n + i]
            media.save_png(image, path, metadata=out.metadata(i))
            print(path)


def run_answer(args) -> None:
    image = media.load_image(args.image)  # a file, readable, decoded: before loading models
    pipe = _pipeline(args)
    sampling = dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    settings = pipe.check_answer(args.max_new_tokens, **sampling)
    seed = _seed(args.seed) if settings.temperature > 0 else args.seed
    pipe.load()
    if args.no_stream:
        with _Bar("answer", rows="done") as bar:
            out = pipe.answer(image, args.question, args.max_new_tokens, seed=seed, progress=bar, **sampling)
        print(out.text)
        return
    from .streaming import TextStreamer

    pipe.answer(image, args.question, args.max_new_tokens, seed=seed, streamer=TextStreamer(pipe.processor.tokenizer),
                **sampling)
    print()


def run_video(args) -> None:
    if args.n_frames < 4 or args.n_frames % 4:
        raise UserError(f"--frames must be a positive multiple of 4, got {args.n_frames}")
    source = Path(args.frames)
    if not source.exists():
        raise FileNotFoundError(f"frames not found: {source}")
    out = _check_out(args.out, (".gif", ".mp4"))
    count, size = media.check_video(source)  # every frame read, one size
    if count % 4:
        raise UserError(f"{source} has {count} frames; video continuation needs a multiple of 4 "
                        f"(drop {count % 4} or add {4 - count % 4})")
    frames_dir = out.parent / f"{out.stem}_frames"
    check_outputs([out], inputs=[source], overwrite=args.overwrite, option="--out", directories=[frames_dir])
    if out.suffix.lower() == ".mp4":
        media.require_av()
        media.check_mp4_size(*size)  # the new frames have the input's size
    pipe = _pipeline(args)
    pipe.check_video(size, count, args.n_frames, args.prompt, top_k=args.top_k)  # fits the model's context
    seed = _seed(args.seed)
    pipe.load()
    frames = media.load_frames(source)
    with _Bar(f"video +{args.n_frames} frames") as bar:
        result = pipe.continue_video(frames, args.n_frames, args.prompt, top_k=args.top_k, seed=seed, progress=bar)
    media.save_frames(result.frames, frames_dir)
    # last: the video there means the frames are complete
    media.save_video(result.frames, out, fps=args.fps, metadata={**result.metadata(), "fps": repr(args.fps)})
    print(out)
    print(frames_dir)
