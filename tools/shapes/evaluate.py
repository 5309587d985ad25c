"""What the shapes model can do, measured from pixels and text on held-out data.

    python tools/shapes/evaluate.py --data shapes-run/data --out shapes-run/eval [--figures docs/images]

- text-to-image: one image per prompt "a {colour} {shape} on a {background} background" for
  every combination (60), seeds 0..59; `measure.analyse` reads background, colour and shape back
  from the pixels;
- VQA: the four questions on held-out images (data/heldout/scenes.jsonl), greedy answers
  compared with the truth;
- video continuation: each held-out motion's first 4 frames and caption, 4 frames continued;
  the shape must move on in its direction (`measure.track`);
- the vision tokenizer alone: held-out images and motions encoded and decoded (what a perfect
  LM could score), and the first latent frame of each motion decoded twice (a copying LM).

Without --model the installed default model (emu3-shapes) is measured. Writes OUT/eval.json
and, with --figures, the pictures of docs/shapes.md. The same functions serve the integration
tests (integration/test_default_model.py) on smaller samples.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from shapes import measure, world  # noqa: E402

UPSCALE = 2  # generated 32x32 images are read at 64x64 (nearest), the size measure is tuned for


def prompts() -> list[tuple[str, str, str]]:
    """Every (colour, shape, background) of the world, shape colour != background."""
    return [(c, s, b) for c, s, b in itertools.product(world.COLOURS, world.SHAPES, world.COLOURS) if c != b]


def read(image: Image.Image) -> measure.Analysis:
    """`measure.analyse` of a generated image, read at twice its size."""
    return measure.analyse(image.resize((image.width * UPSCALE, image.height * UPSCALE), Image.NEAREST))


def score_t2i(pipe, combos, seed: int = 0) -> tuple[dict, list]:
    """Generate one image per (colour, shape, background) with seeds seed, seed+1, ...; the
    fraction whose background, colour, shape (and all three) are read back as asked."""
    rows = []
    for i, (colour, shape, background) in enumerate(combos):
        caption = world.Scene(shape, colour, background, 1.0, 0.0, 0.0).caption()
        image = pipe(caption, seed=seed + i).images[0]
        got = read(image)
        rows.append({"prompt": caption, "image": image, "background": got.background, "colour": got.colour,
                     "shape": got.shape, "background_fraction": got.background_fraction,
                     "ok_background": got.background == background, "ok_colour": got.colour == colour,
                     "ok_shape": got.shape == shape})
    n = len(rows)
    summary = {"n": n}
    for key in ("background", "colour", "shape"):
        summary[f"{key}_accuracy"] = sum(r[f"ok_{key}"] for r in rows) / n
    summary["all_accuracy"] = sum(r["ok_background"] and r["ok_colour"] and r["ok_shape"] for r in rows) / n
    return summary, rows


def heldout_scenes(data: Path, limit: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (data / "heldout" / "scenes.jsonl").read_text().splitlines() if line]
    return rows[:limit]


def score_vqa(pipe, data: Path, scenes: list[dict]) -> tuple[dict, list]:
    """Greedy answers to every question of `world.questions` on each held-out scene; accuracy per question."""
    rows = []
    for row in scenes:
        scene = world.Scene(row["shape"], row["colour"], row["background"], row["size"], row["cx"], row["cy"])
        image = Image.open(data / "heldout" / row["image"]).convert("RGB")
        for question, truth in world.questions(scene, image.width):
            answer = pipe.answer(image, question).text.strip()
            rows.append({"image": row["image"], "question": question, "truth": truth, "answer": answer,
                         "ok": answer == truth})
    summary = {"n_images": len(scenes)}
    for question in dict.fromkeys(r["question"] for r in rows):
        asked = [r for r in rows if r["question"] == question]
        summary[question] = sum(r["ok"] for r in asked) / len(asked)
    return summary, rows


def heldout_motions(data: Path, limit: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (data / "heldout" / "motions.jsonl").read_text().splitlines() if line]
    return rows[:limit]


def motion_frames(data: Path, row: dict, n: int) -> list[Image.Image]:
    """The first `n` frames of a held-out motion (a row of heldout_motions)."""
    folder = data / "heldout" / row["video"]
    return [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))][:n]


def moved_on(given: list, made: list, direction: str) -> float | None:
    """How far (pixels) the shape's centroid moved in `direction` from the last given frame to
    the last made one; None where no shape was found in either."""
    big = [f.resize((f.width * UPSCALE, f.height * UPSCALE), Image.NEAREST) for f in (given[-1], made[-1])]
    before, after = measure.track(big)
    if before is None or after is None:
        return None
    dx, dy = after[0] - before[0], after[1] - before[1]
    return {"left": -dx, "right": dx, "up": -dy, "down": dy}[direction] / UPSCALE


def score_video(pipe, data: Path, motions: list[dict], given: int = 4, seed: int = 0) -> tuple[dict, list]:
    """Continue each motion from its first `given` frames and its caption by `given` frames;
    correct when the shape's centroid moved on in the caption's direction."""
    rows = []
    for i, row in enumerate(motions):
        frames = motion_frames(data, row, given)
        out = pipe.continue_video(frames, given, row["caption"], seed=seed + i)
        moved = moved_on(frames, out.frames, row["direction"])
        rows.append({"video": row["video"], "direction": row["direction"], "moved_px": moved,
                     "ok": moved is not None and moved > 0.5, "frames": frames + out.frames})
    summary = {"n": len(rows), "direction_accuracy": sum(r["ok"] for r in rows) / max(1, len(rows)),
               "mean_moved_px": sum(r["moved_px"] or 0 for r in rows) / max(1, len(rows))}
    return summary, rows


def score_reconstruction(processor, data: Path, scenes: list[dict], motions: list[dict]) -> dict:
    """What the vision tokenizer alone keeps: each held-out image encoded and decoded, its
    background, colour and shape read back; each held-out motion's first 8 frames (two latent
    frames) encoded and decoded, the moved-on measure of `score_video` on the decoded last 4
    frames (the true codes: what a perfect LM would score), and on the first latent frame's
    codes decoded twice (what an LM that copies the given frame scores)."""
    hits = {"background": 0, "colour": 0, "shape": 0}
    for row in scenes:
        image = Image.open(data / "heldout" / row["image"]).convert("RGB")
        got = read(processor.decode_codes(processor.encode_images([image])[0]))
        for key in hits:
            hits[key] += getattr(got, key) == row[key]
    true_moves, copy_moves = [], []
    for row in motions:
        frames = motion_frames(data, row, 8)
        codes = processor.vq_model.encode(processor.image_processor.preprocess_video(frames)[None])
        codes = (codes.asnumpy() if hasattr(codes, "asnumpy") else np.asarray(codes))[0]
        decoded = processor.decode_video_codes(codes)
        copied = processor.decode_video_codes(np.stack([codes[0], codes[0]]))
        true_moves.append(moved_on(frames[:4], decoded[4:], row["direction"]))
        copy_moves.append(moved_on(frames[:4], copied[4:], row["direction"]))

    def rate(moves):
        return {"direction_accuracy": sum(m is not None and m > 0.5 for m in moves) / max(1, len(moves)),
                "mean_moved_px": sum(m or 0 for m in moves) / max(1, len(moves))}

    n = max(1, len(scenes))
    return {"n_images": len(scenes), **{f"{k}_accuracy": v / n for k, v in hits.items()},
            "n_videos": len(motions), "video_true_codes": rate(true_moves), "video_copy": rate(copy_moves)}


# ---- figures ----------------------------------------------------------------------------------

def _label(draw, xy, text, fill=(0, 0, 0)):
    draw.text(xy, text, fill=fill)


def t2i_grid(rows: list, path: Path, scale: int = 3) -> None:
    """The generated images, one row per background colour, labelled with the prompt."""
    cell, pad = 32 * scale, 4
    backgrounds = list(world.COLOURS)
    by_bg = {b: [r for r in rows if r["prompt"].endswith(f"on a {b} background")] for b in backgrounds}
    cols = max(len(v) for v in by_bg.values())
    width, height = cols * (cell + pad) + 70, len(backgrounds) * (cell + pad + 24) + 4
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, b in enumerate(backgrounds):
        y = r * (cell + pad + 24) + 4
        _label(draw, (4, y + cell // 2), f"on {b}")
        for c, row in enumerate(by_bg[b]):
            x = 70 + c * (cell + pad)
            sheet.paste(row["image"].resize((cell, cell), Image.NEAREST), (x, y))
            words = row["prompt"].split()
            _label(draw, (x, y + cell + 2), f"{words[1][:3]} {words[2][:3]}",
                   fill=(0, 0, 0) if row["ok_colour"] and row["ok_shape"] else (200, 0, 0))
    sheet.save(path)


def vqa_examples(data: Path, rows: list, path: Path, n: int = 6, scale: int = 4, columns: int = 3) -> None:
    """`n` held-out images with every question and the model's answer (green right, red wrong)."""
    cell, text = 32 * scale, 250
    images = list(dict.fromkeys(r["image"] for r in rows))[:n]
    asked = max(sum(r["image"] == name for r in rows) for name in images)
    height = max(cell, 30 * asked) + 12
    lines = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * (cell + text), lines * height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, name in enumerate(images):
        x, y = (i % columns) * (cell + text) + 4, (i // columns) * height + 4
        sheet.paste(Image.open(data / "heldout" / name).convert("RGB").resize((cell, cell), Image.NEAREST), (x, y))
        for j, r in enumerate(r for r in rows if r["image"] == name):
            _label(draw, (x + cell + 6, y + 30 * j), r["question"], fill=(80, 80, 80))
            _label(draw, (x + cell + 6, y + 12 + 30 * j), r["answer"], fill=(0, 120, 0) if r["ok"] else (200, 0, 0))
    sheet.save(path)


def video_figure(rows: list, gif: Path, strip: Path, n: int = 4, scale: int = 3) -> None:
    """A GIF of the first `n` continued videos side by side (given frames, then continued), and
    a strip of all their frames (the continued ones framed in red)."""
    rows = rows[:n]
    cell = 32 * scale
    length = len(rows[0]["frames"])
    given = length // 2
    frames = []
    for t in range(length):
        frame = Image.new("RGB", (n * (cell + 4), cell + 16), (255, 255, 255))
        draw = ImageDraw.Draw(frame)
        for i, row in enumerate(rows):
            frame.paste(row["frames"][t].resize((cell, cell), Image.NEAREST), (i * (cell + 4), 0))
            _label(draw, (i * (cell + 4) + 2, cell + 2), ("given " if t < given else "new ") + row["direction"],
                   fill=(0, 0, 0) if t < given else (200, 0, 0))
        frames.append(frame)
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=250, loop=0)
    sheet = Image.new("RGB", (length * (cell + 4), n * (cell + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        for t, f in enumerate(row["frames"]):
            x, y = t * (cell + 4), i * (cell + 4)
            sheet.paste(f.resize((cell, cell), Image.NEAREST), (x, y))
            if t >= given:
                draw.rectangle([x, y, x + cell - 1, y + cell - 1], outline=(220, 0, 0), width=2)
    sheet.save(strip)


def curves(series: dict[str, list[float]], path: Path, title: str, width: int = 640, height: int = 220) -> None:
    """Line plots of the named series (each scaled to its own range), one panel each."""
    colours = [(40, 80, 220), (220, 40, 40), (40, 160, 60)]
    panels = len(series)
    sheet = Image.new("RGB", (width, panels * height + 30), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    _label(draw, (10, 8), title)
    for p, (name, values) in enumerate(series.items()):
        top = 30 + p * height
        left, right, bottom = 60, width - 10, top + height - 30
        lo, hi = min(values), max(values)
        hi = hi if hi > lo else lo + 1
        draw.rectangle([left, top, right, bottom], outline=(180, 180, 180))
        _label(draw, (4, top), f"{hi:.3g}")
        _label(draw, (4, bottom - 10), f"{lo:.3g}")
        _label(draw, (left + 6, top + 4), f"{name} (last {values[-1]:.3g})", fill=colours[p % 3])
        n = len(values)
        points = [(left + (right - left) * i / max(1, n - 1), bottom - (bottom - top) * (v - lo) / (hi - lo))
                  for i, v in enumerate(values)]
        draw.line(points, fill=colours[p % 3], width=1)
        _label(draw, (left, bottom + 4), "step 1")
        _label(draw, (right - 60, bottom + 4), f"step {n}")
    sheet.save(path)


def smooth(values: list[float], k: int = 10) -> list[float]:
    """Running mean over the last k values (metrics are per batch, so noisy)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - k] if i >= k else 0.0)
        out.append(total / min(i + 1, k))
    return out


def token_layout(image: Image.Image, codes, path: Path, scale: int = 8) -> None:
    """An image beside its image block: the size text, 8 rows of [8 visual tokens, eol], eof,
    eoi; each visual token drawn on the mean colour of its 4x4 patch, with its code."""
    import numpy as np

    h, w = codes.shape
    patch = image.width // w
    big = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    cell = 44
    width = big.width + 40 + (w + 1) * cell + 10
    height = max(big.height, (h + 2) * cell) + 60
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    sheet.paste(big, (10, 40))
    for k in range(1, w):
        x = 10 + k * patch * scale
        draw.line([(x, 40), (x, 40 + big.height)], fill=(128, 128, 128))
    for k in range(1, h):
        y = 40 + k * patch * scale
        draw.line([(10, y), (10 + big.width, y)], fill=(128, 128, 128))
    x0 = big.width + 40
    _label(draw, (10, 10), f"{image.width}x{image.height} pixels -> {h}x{w} codes")
    _label(draw, (x0, 10), f'<|image start|> "{h}*{w}" <|image token|>')
    pixels = np.asarray(image, np.float64)
    for r in range(h):
        for c in range(w):
            mean = tuple(int(v) for v in pixels[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].mean((0, 1)))
            box = [x0 + c * cell, 40 + r * cell, x0 + (c + 1) * cell - 2, 40 + (r + 1) * cell - 2]
            draw.rectangle(box, fill=mean)
            ink = (0, 0, 0) if sum(mean) > 380 else (255, 255, 255)
            _label(draw, (box[0] + 4, box[1] + 14), str(int(codes[r, c])), fill=ink)
        _label(draw, (x0 + w * cell + 2, 40 + r * cell + 14), "eol", fill=(0, 0, 160))
    _label(draw, (x0, 40 + h * cell + 8), "<|extra_201|> (eof)  <|image end|>", fill=(0, 0, 160))
    sheet.save(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the recipe's data directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default=None, help="LM directory (default: the installed default model)")
    parser.add_argument("--vq", default=None, help="vision tokenizer directory (with --model)")
    parser.add_argument("--vqa-images", type=int, default=200)
    parser.add_argument("--videos", type=int, default=20)
    parser.add_argument("--figures", type=Path, default=None, help="write the docs' pictures here")
    args = parser.parse_args(argv)
    from emu3_decoding import Emu3Pipeline

    pipe = Emu3Pipeline.from_pretrained(args.model, args.vq)
    args.out.mkdir(parents=True, exist_ok=True)
    t2i, t2i_rows = score_t2i(pipe, prompts())
    print("text-to-image", t2i, flush=True)
    vqa, vqa_rows = score_vqa(pipe, args.data, heldout_scenes(args.data, args.vqa_images))
    print("VQA", vqa, flush=True)
    video, video_rows = score_video(pipe, args.data, heldout_motions(args.data, args.videos))
    print("video", video, flush=True)
    vq_alone = score_reconstruction(pipe.processor, args.data, heldout_scenes(args.data, args.vqa_images),
                                    heldout_motions(args.data, args.videos))
    print("vision tokenizer alone", vq_alone, flush=True)
    report = {"t2i": t2i, "vqa": vqa, "video": video, "reconstruction": vq_alone,
              "t2i_rows": [{k: v for k, v in r.items() if k != "image"} for r in t2i_rows],
              "vqa_rows": vqa_rows, "video_rows": [{k: v for k, v in r.items() if k != "frames"} for r in video_rows]}
    (args.out / "eval.json").write_text(json.dumps(report, indent=1) + "\n")
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
        t2i_grid(t2i_rows, args.figures / "shapes_t2i_grid.png")
        vqa_examples(args.data, vqa_rows, args.figures / "shapes_vqa.png")
        video_figure(video_rows, args.figures / "shapes_video.gif", args.figures / "shapes_video.png")
        from emu3_vq import Emu3ImageProcessor, Emu3VQModel

        vq, processor = Emu3VQModel.from_pretrained(args.vq), Emu3ImageProcessor.from_pretrained(args.vq)
        example = world.draw(world.Scene("triangle", "yellow", "blue", 16.0, 14.0, 17.0), 32)
        codes = vq.encode(processor.preprocess([example])).asnumpy()[0]
        token_layout(example, codes, args.figures / "shapes_tokens.png")
        from emu3_shapes import training_summary

        record = training_summary()
        curves({"loss": smooth(record["vq"]["loss"]), "PSNR (dB)": smooth(record["vq"]["psnr"])},
               args.figures / "shapes_vq_curves.png", "vision tokenizer: loss and PSNR per step (mean of 10)")
        curves({"loss": smooth(record["sft"]["loss"])}, args.figures / "shapes_sft_curve.png",
               "language model: SFT loss per step (mean of 10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
