"""Write a shapes-world dataset: text-to-image pairs, VQA, videos, a held-out set and a text corpus.

    python tools/shapes/data.py --out DIR --seed 0 [--images 3000 --lm-images 12000 --videos 600 --heldout 200]
                                [--shape-sizes 14 22]

Layout of DIR (every path inside a file is relative to DIR):
    images/00000.png ...      training images of the vision tokenizer and the LM
    more-images/03000.png ... more training images, for the LM only (the same scene stream continued:
                              --lm-images never changes images/)
    captions.jsonl            {"image", "text"} per line, every training image (both folders)
    vqa.json                  LLaVA-style records, one per (training image, question)
    videos/00000/frame_000.png ...; videos.jsonl: {"video", "text"} per line
    heldout/scenes.jsonl, heldout/images/   held-out scenes (own seed stream) for evaluation
    heldout/motions.jsonl, heldout/videos/  held-out motions
    corpus.txt                every distinct caption, question and answer, one per line
    manifest.json             seed, counts, image size, vocabulary
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

try:
    from . import world
except ImportError:  # run as a script: tools/shapes is on sys.path
    import world

# What write_dataset creates in `out` (and removes first when overwriting).
OUTPUTS = ("images", "more-images", "videos", "heldout", "captions.jsonl", "vqa.json", "videos.jsonl",
           "corpus.txt", "manifest.json")
# Independent seed streams: changing one count never changes the other parts.
_IMAGES, _HELDOUT, _VIDEOS, _HELDOUT_VIDEOS = range(4)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _write_motion(motion, folder: Path, n_frames: int, image_size: int) -> None:
    folder.mkdir(parents=True)
    for i, frame in enumerate(motion.frames(n_frames, image_size)):
        frame.save(folder / f"frame_{i:03d}.png")


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"{out} is not empty; pass overwrite=True (--overwrite) to write into it")
        for name in OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def write_dataset(out, seed: int = 0, images: int = 3000, videos: int = 600, heldout: int = 200,
                  image_size: int = world.IMAGE_SIZE, n_frames: int = world.N_FRAMES,
                  overwrite: bool = False, progress: bool = True, lm_images: int = 0,
                  shape_sizes: tuple[int, int] | None = None) -> dict:
    """Write the dataset into `out` (see the module docstring); returns the manifest.

    `images` scenes go to images/ (the vision tokenizer trains on them), `lm_images` more of the
    same stream to more-images/ (the tokenizer's data stays the same whatever `lm_images` is).
    `shape_sizes`: the smallest and largest shape of the images and held-out images in pixels
    (default 20..36 at 64 px, scaled to `image_size`); the videos' shapes keep their sizes."""
    if min(images, videos, heldout, lm_images) < 0:
        raise ValueError("counts must be >= 0")
    scale = image_size / world.IMAGE_SIZE
    lo, hi = shape_sizes if shape_sizes is not None else (round(20 * scale), round(36 * scale))
    if not 0 < lo <= hi or hi + 2 * world.MARGIN > image_size:  # checked before anything is written
        raise ValueError(f"shape sizes {lo}..{hi} do not fit a {image_size}px image")
    sizes = {"min_size": int(lo), "max_size": int(hi)}
    out = Path(out)
    _prepare(out, overwrite)
    texts: dict[str, None] = {}  # distinct texts in order of first use

    def bar(it, desc):
        return tqdm(it, desc=desc, unit="item", disable=not progress, leave=False)

    # text-to-image pairs and VQA on the training images
    rng = np.random.default_rng([seed, _IMAGES])
    (out / "images").mkdir()
    if lm_images:
        (out / "more-images").mkdir()
    captions, vqa = [], []
    for i in bar(range(images + lm_images), "images"):
        scene = world.random_scene(rng, image_size, **sizes)
        name = f"{'images' if i < images else 'more-images'}/{i:05d}.png"
        world.draw(scene, image_size).save(out / name)
        captions.append({"image": name, "text": scene.caption()})
        texts[scene.caption()] = None
        for q, (question, answer) in enumerate(world.questions(scene, image_size)):
            vqa.append({"id": f"{i:05d}-{q}", "image": name, "conversations": [
                {"from": "human", "value": "<image>\n" + question},
                {"from": "gpt", "value": answer}]})
            texts[question] = texts[answer] = None
    _write_jsonl(out / "captions.jsonl", captions)
    (out / "vqa.json").write_text(json.dumps(vqa, indent=1), encoding="utf-8")

    # videos
    rng = np.random.default_rng([seed, _VIDEOS])
    (out / "videos").mkdir()
    rows = []
    for i in bar(range(videos), "videos"):
        motion = world.random_motion(rng, n_frames, image_size)
        _write_motion(motion, out / "videos" / f"{i:05d}", n_frames, image_size)
        rows.append({"video": f"videos/{i:05d}", "text": motion.caption()})
        texts[motion.caption()] = None
    _write_jsonl(out / "videos.jsonl", rows)

    # held-out scenes and motions, from their own seed streams
    held = out / "heldout"
    (held / "images").mkdir(parents=True)
    (held / "videos").mkdir()
    rng = np.random.default_rng([seed, _HELDOUT])
    rows = []
    for i in bar(range(heldout), "held-out images"):
        scene = world.random_scene(rng, image_size, **sizes)
        name = f"images/{i:05d}.png"
        world.draw(scene, image_size).save(held / name)
        rows.append({"image": name, **scene.to_dict(), "position": scene.position(image_size),
                     "caption": scene.caption()})
    _write_jsonl(held / "scenes.jsonl", rows)
    heldout_videos = max(4, heldout // 10) if heldout else 0
    rng = np.random.default_rng([seed, _HELDOUT_VIDEOS])
    rows = []
    for i in bar(range(heldout_videos), "held-out videos"):
        motion = world.random_motion(rng, n_frames, image_size)
        _write_motion(motion, held / "videos" / f"{i:05d}", n_frames, image_size)
        rows.append({"video": f"videos/{i:05d}", **motion.to_dict(), "frames": n_frames,
                     "caption": motion.caption()})
    _write_jsonl(held / "motions.jsonl", rows)

    (out / "corpus.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    manifest = {
        "seed": seed,
        "counts": {"images": images, "lm_images": lm_images, "vqa": len(vqa), "videos": videos,
                   "heldout": heldout, "heldout_videos": heldout_videos, "corpus": len(texts)},
        "image_size": image_size,
        "shape_sizes": [sizes["min_size"], sizes["max_size"]],
        "frames": n_frames,
        "colours": {name: list(rgb) for name, rgb in world.COLOURS.items()},
        "shapes": list(world.SHAPES),
        "directions": list(world.DIRECTIONS),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory (must be empty or absent)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=3000, help="training images (default 3000)")
    parser.add_argument("--lm-images", type=int, default=0,
                        help="more training images for the LM only, in more-images/ (default 0)")
    parser.add_argument("--videos", type=int, default=600, help="training videos (default 600)")
    parser.add_argument("--heldout", type=int, default=200, help="held-out images (default 200)")
    parser.add_argument("--image-size", type=int, default=world.IMAGE_SIZE)
    parser.add_argument("--shape-sizes", type=int, nargs=2, metavar=("MIN", "MAX"), default=None,
                        help="shape sizes of the images in pixels (default 20 36 at 64 px, scaled)")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous dataset in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = write_dataset(args.out, seed=args.seed, images=args.images, videos=args.videos,
                                 heldout=args.heldout, image_size=args.image_size, lm_images=args.lm_images,
                                 shape_sizes=args.shape_sizes,
                                 overwrite=args.overwrite, progress=not args.quiet)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        counts = ", ".join(f"{v} {k}" for k, v in manifest["counts"].items())
        print(f"wrote {counts} to {args.out} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
