"""Tests of the shapes world, its dataset writer and its pixel measurements."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from shapes import data, measure, world  # tools/ is on sys.path: see conftest.py
from shapes.world import Motion, Scene

HERE = Path(__file__).resolve().parent


def noisy(image: Image.Image, rng: np.random.Generator, sigma: float = 20.0, blur: int = 2) -> Image.Image:
    """A lossy-reconstruction stand-in: box blur then gaussian pixel noise."""
    pixels = np.asarray(image.filter(ImageFilter.BoxBlur(blur)), dtype=np.float32)
    pixels = pixels + rng.normal(0.0, sigma, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))


def recovered(scenes, images) -> Counter:
    """How many of colour, background and shape analyse() got right, and all three at once."""
    hits = Counter()
    for scene, image in zip(scenes, images, strict=True):
        a = measure.analyse(image)
        right = {k: getattr(a, k) == getattr(scene, k) for k in ("colour", "background", "shape")}
        hits.update(k for k, ok in right.items() if ok)
        hits["all"] += all(right.values())
    return hits


# ---- world -------------------------------------------------------------------------------------

def test_vocabulary():
    assert world.COLOURS == {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220),
                             "yellow": (235, 215, 40), "white": (245, 245, 245)}
    assert world.SHAPES == ("circle", "square", "triangle")


def test_scene_text_and_checks():
    scene = Scene("circle", "red", "blue", 20.0, 10.0, 32.0)
    assert scene.caption() == "a red circle on a blue background"
    assert [Scene("square", "red", "blue", 10.0, x, 32.0).position() for x in (5, 27.9, 28, 32, 36, 36.1, 60)] == [
        "left", "left", "middle", "middle", "middle", "right", "right"]
    assert [Scene("square", "red", "blue", 20.0, x, 16.0).position(32) for x in (13, 14, 18, 19)] == [
        "left", "middle", "middle", "right"]
    assert world.questions(scene) == [("What colour is the shape?", "red"), ("What shape is it?", "circle"),
                                      ("What colour is the background?", "blue"),
                                      ("Where is the shape?", "left"),
                                      ("Describe the image.", "a red circle on a blue background")]
    with pytest.raises(ValueError, match="same colour"):
        Scene("circle", "red", "red", 20.0, 32.0, 32.0)
    with pytest.raises(ValueError, match="unknown shape"):
        Scene("star", "red", "blue", 20.0, 32.0, 32.0)


def test_draw_pixels():
    image = world.draw(Scene("square", "green", "white", 20.0, 30.0, 40.0))
    assert image.size == (64, 64) and image.mode == "RGB"
    pixels = np.asarray(image)
    shape = (pixels == world.COLOURS["green"]).all(-1)
    assert shape.sum() == 400  # 20 x 20, no anti-aliasing
    assert ((pixels == world.COLOURS["white"]).all(-1) | shape).all()  # only the two colours
    ys, xs = np.nonzero(shape)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (20, 39, 30, 49)

    tri = (np.asarray(world.draw(Scene("triangle", "red", "blue", 30.0, 32.0, 32.0)))
           == world.COLOURS["red"]).all(-1)
    widths = tri.sum(1)[tri.any(1)]
    assert widths[0] <= 2 and widths[-1] >= 29  # apex on top, base at the bottom
    circle = (np.asarray(world.draw(Scene("circle", "red", "blue", 30.0, 32.0, 32.0)))
              == world.COLOURS["red"]).all(-1)
    assert abs(circle.sum() / 900 - np.pi / 4) < 0.03


def test_random_scenes_fit_and_cover_vocabulary():
    rng = np.random.default_rng(0)
    scenes = [world.random_scene(rng) for _ in range(500)]
    for s in scenes:
        x0, y0, x1, y1 = s.box()
        assert min(x0, y0) >= 2 and max(x1, y1) <= 61, s
        assert 20 <= s.size <= 36 and s.colour != s.background
    assert {s.shape for s in scenes} == set(world.SHAPES)
    assert {s.colour for s in scenes} == {s.background for s in scenes} == set(world.COLOURS)
    assert {s.position() for s in scenes} == {"left", "middle", "right"}


def test_random_motions_stay_inside():
    rng = np.random.default_rng(1)
    for _ in range(200):
        m = world.random_motion(rng)
        assert 16 <= m.scene.size <= 24 and 2 <= m.speed <= 3
        for i in range(12):
            x0, y0, x1, y1 = m.at(i).box()
            assert min(x0, y0) >= 0 and max(x1, y1) <= 63, (m, i)
    m = Motion(Scene("square", "red", "blue", 16.0, 20.0, 32.0), "right", 2.0)
    assert m.caption() == "a red square moving right on a blue background"
    frames = m.frames()
    assert len(frames) == 12 and all(f.size == (64, 64) for f in frames)


# ---- measure -----------------------------------------------------------------------------------

@pytest.mark.parametrize("scene", [
    Scene("circle", "red", "white", 30.0, 32.0, 32.0),
    Scene("square", "blue", "yellow", 20.0, 14.0, 50.0),
    Scene("triangle", "green", "red", 36.0, 40.0, 30.0),
    Scene("triangle", "white", "blue", 20.0, 12.0, 12.0),
    Scene("circle", "yellow", "green", 20.0, 52.0, 52.0),
    Scene("square", "white", "yellow", 36.0, 32.0, 32.0),
])
def test_analyse_hand_picked(scene):
    a = measure.analyse(world.draw(scene))
    assert (a.colour, a.background, a.shape) == (scene.colour, scene.background, scene.shape)
    cy = scene.cy + (scene.size / 6 if scene.shape == "triangle" else 0)  # a triangle's centroid is low
    assert abs(a.centroid[0] - scene.cx) < 1.5 and abs(a.centroid[1] - cy) < 1.5
    left, top, right, bottom = a.bbox
    assert abs((right - left) - scene.size) <= 1 and abs((bottom - top) - scene.size) <= 1
    # the blob is smoothed (3x3 majority), which may shave a pixel off sharp corners
    assert a.background_fraction + a.blob_fraction == pytest.approx(1.0, abs=8 / 4096)


def test_analyse_clean_and_noisy():
    rng = np.random.default_rng(2)
    scenes = [world.random_scene(rng) for _ in range(300)]
    clean = recovered(scenes, [world.draw(s) for s in scenes])
    assert clean["all"] >= 297, clean
    lossy = recovered(scenes, [noisy(world.draw(s), rng) for s in scenes])
    assert lossy["all"] >= 270, lossy


def test_analyse_no_blob_and_array_input():
    plain = Image.new("RGB", (64, 64), world.COLOURS["blue"])
    a = measure.analyse(plain)
    assert a.background == "blue" and a.background_fraction == 1.0
    assert a.colour is a.shape is a.centroid is a.bbox is None
    pixels = np.asarray(world.draw(Scene("square", "red", "green", 24.0, 32.0, 32.0)))
    assert measure.analyse(pixels).shape == "square"
    assert measure.analyse(pixels / 255.0).colour == "red"
    with pytest.raises(ValueError, match="RGB"):
        measure.analyse(np.zeros((64, 64)))


def test_nearest_colour():
    for name, rgb in world.COLOURS.items():
        assert measure.nearest_colour(rgb) == name
    assert measure.nearest_colour((200, 60, 50)) == "red"
    assert measure.nearest_colour((255, 255, 255)) == "white"


def test_largest_component():
    mask = np.zeros((10, 10), bool)
    mask[0:2, 0:2] = True  # 4 px
    mask[5:9, 5:8] = True  # 12 px
    mask[3, 3] = True
    blob = measure.largest_component(mask)
    assert blob.sum() == 12 and blob[5:9, 5:8].all()
    assert not measure.largest_component(np.zeros((4, 4), bool)).any()


def test_track_and_direction():
    rng = np.random.default_rng(3)
    for i in range(40):
        m = world.random_motion(rng)
        frames = m.frames()
        if i % 2:
            frames = [noisy(f, rng) for f in frames]
        assert measure.direction(frames) == m.direction, m
    m = Motion(Scene("circle", "red", "blue", 20.0, 20.0, 32.0), "right", 2.0)
    path = measure.track(m.frames(4))
    assert [round(x) for x, _ in path] == [20, 22, 24, 26] and all(abs(y - 32) < 1 for _, y in path)
    still = [world.draw(m.scene)] * 5
    assert measure.direction(still) is None
    assert measure.direction([Image.new("RGB", (64, 64), world.COLOURS["blue"])] * 3) is None


# ---- data --------------------------------------------------------------------------------------

COUNTS = {"images": 30, "videos": 6, "heldout": 20}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "ds"
    manifest = data.write_dataset(out, seed=0, progress=False, **COUNTS)
    return out, manifest


def test_dataset_formats(dataset):
    out, manifest = dataset
    captions = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert len(captions) == 30
    for row in captions:
        assert set(row) == {"image", "text"} and (out / row["image"]).is_file()
        assert Image.open(out / row["image"]).size == (64, 64)
    assert captions[0]["image"] == "images/00000.png"

    vqa = json.loads((out / "vqa.json").read_text())
    assert len(vqa) == 30 * len(world.questions(world.Scene("circle", "red", "blue", 20.0, 32.0, 32.0)))
    assert len({r["id"] for r in vqa}) == len(vqa)
    for r in vqa:
        human, gpt = r["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n")
        assert gpt["from"] == "gpt" and gpt["value"]
        assert isinstance(r["id"], str) and (out / r["image"]).is_file()
    # the answers are the truth, as the pixels show it
    first = measure.analyse(Image.open(out / vqa[0]["image"]))
    answers = {r["conversations"][0]["value"][8:]: r["conversations"][1]["value"]
               for r in vqa if r["image"] == vqa[0]["image"]}
    assert answers["What colour is the shape?"] == first.colour
    assert answers["What shape is it?"] == first.shape
    assert answers["What colour is the background?"] == first.background
    assert answers["Describe the image."] == f"a {first.colour} {first.shape} on a {first.background} background"

    videos = [json.loads(line) for line in (out / "videos.jsonl").read_text().splitlines()]
    assert len(videos) == 6
    for row in videos:
        frames = sorted((out / row["video"]).glob("*.png"))
        assert [f.name for f in frames] == [f"frame_{i:03d}.png" for i in range(12)]
        assert f" moving {measure.direction([Image.open(f) for f in frames])} " in row["text"]

    held = out / "heldout"
    scenes = [json.loads(line) for line in (held / "scenes.jsonl").read_text().splitlines()]
    assert len(scenes) == 20
    for row in scenes:
        scene = Scene(**{k: row[k] for k in ("shape", "colour", "background", "size", "cx", "cy")})
        assert row["caption"] == scene.caption() and row["position"] == scene.position()
        assert np.array_equal(np.asarray(Image.open(held / row["image"])), np.asarray(world.draw(scene)))
    motions = [json.loads(line) for line in (held / "motions.jsonl").read_text().splitlines()]
    assert len(motions) == 4 and all(len(list((held / m["video"]).glob("*.png"))) == 12 for m in motions)
    # held-out scenes come from another seed stream than the training ones
    assert [r["caption"] for r in scenes[:10]] != [r["text"] for r in captions[:10]]

    corpus = (out / "corpus.txt").read_text().splitlines()
    assert len(corpus) == len(set(corpus))
    expected = ({r["text"] for r in captions} | {r["text"] for r in videos}
                | {t["value"].removeprefix("<image>\n") for r in vqa for t in r["conversations"]})
    assert set(corpus) == expected

    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert on_disk["seed"] == 0 and on_disk["image_size"] == 64
    assert on_disk["counts"]["images"] == 30 and on_disk["counts"]["heldout_videos"] == 4
    assert on_disk["shapes"] == list(world.SHAPES) and set(on_disk["colours"]) == set(world.COLOURS)


def _files(out: Path) -> dict[str, bytes]:
    names = ["captions.jsonl", "vqa.json", "videos.jsonl", "corpus.txt", "heldout/scenes.jsonl",
             "images/00000.png", "images/00017.png", "videos/00003/frame_007.png", "heldout/images/00005.png"]
    return {n: (out / n).read_bytes() for n in names}


def test_reproducible(dataset, tmp_path):
    out, _ = dataset
    data.write_dataset(tmp_path / "same", seed=0, progress=False, **COUNTS)
    assert _files(tmp_path / "same") == _files(out)
    data.write_dataset(tmp_path / "other", seed=1, progress=False, **COUNTS)
    other = _files(tmp_path / "other")
    assert other["captions.jsonl"] != _files(out)["captions.jsonl"]
    assert other["images/00000.png"] != _files(out)["images/00000.png"]


def test_lm_images_continue_the_stream_and_leave_images_alone(dataset, tmp_path):
    out, _ = dataset
    more = tmp_path / "more"
    manifest = data.write_dataset(more, seed=0, progress=False, lm_images=7, **COUNTS)
    # the tokenizer's images/ and everything else but the training lists are byte-identical
    assert sorted(p.name for p in (more / "images").iterdir()) == sorted(p.name for p in (out / "images").iterdir())
    same = ("images/00000.png", "images/00017.png", "videos/00003/frame_007.png", "heldout/images/00005.png",
            "heldout/scenes.jsonl", "videos.jsonl")
    assert {n: _files(more)[n] for n in same} == {n: _files(out)[n] for n in same}
    assert sorted(p.name for p in (more / "more-images").iterdir()) == [f"{i:05d}.png" for i in range(30, 37)]
    captions = [json.loads(line) for line in (more / "captions.jsonl").read_text().splitlines()]
    assert (more / "captions.jsonl").read_text().startswith((out / "captions.jsonl").read_text())
    assert [c["image"] for c in captions[30:]] == [f"more-images/{i:05d}.png" for i in range(30, 37)]
    # the stream continued: the extra scenes are those a longer images/ would hold
    longer = data.write_dataset(tmp_path / "longer", seed=0, progress=False,
                                **{**COUNTS, "images": COUNTS["images"] + 7})
    assert (tmp_path / "longer" / "images" / "00031.png").read_bytes() == (more / "more-images" / "00031.png").read_bytes()
    assert longer["counts"]["images"] == 37 and manifest["counts"]["lm_images"] == 7
    vqa = json.loads((more / "vqa.json").read_text())
    assert {r["image"] for r in vqa} == {c["image"] for c in captions}


def test_shape_sizes(tmp_path):
    manifest = data.write_dataset(tmp_path / "big", seed=0, progress=False, image_size=32, shape_sizes=(14, 22),
                                  **COUNTS)
    assert manifest["shape_sizes"] == [14, 22]
    rows = [json.loads(line) for line in (tmp_path / "big" / "heldout" / "scenes.jsonl").read_text().splitlines()]
    assert all(14 <= r["size"] <= 22 for r in rows) and max(r["size"] for r in rows) > 18
    # every training image's shape, measured from its pixels, is as wide as asked
    for name in ("00000.png", "00001.png", "00002.png"):
        left, _, right, _ = measure.analyse(Image.open(tmp_path / "big" / "images" / name)).bbox
        assert 13 <= right - left <= 23
    # the default scales 20..36 at 64 px
    assert data.write_dataset(tmp_path / "small", seed=0, progress=False, image_size=32, **COUNTS)["shape_sizes"] == [10, 18]
    with pytest.raises(ValueError, match="do not fit"):
        data.write_dataset(tmp_path / "huge", progress=False, image_size=32, shape_sizes=(14, 30), **COUNTS)
    assert not (tmp_path / "huge").exists()  # refused before anything is written


def test_refuses_non_empty(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        data.write_dataset(tmp_path, images=2, videos=1, heldout=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    data.write_dataset(tmp_path, images=3, videos=1, heldout=1, progress=False, overwrite=True)
    data.write_dataset(tmp_path, images=2, videos=1, heldout=1, progress=False, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["00000.png", "00001.png"]
    assert (tmp_path / "keep.txt").exists()


def test_cli(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, str(HERE / "data.py"), "--out", str(out), "--seed", "3", "--images", "5",
           "--videos", "2", "--heldout", "4", "--quiet"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len((out / "captions.jsonl").read_text().splitlines()) == 5
    assert json.loads((out / "manifest.json").read_text())["counts"]["videos"] == 2
    again = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "not empty" in again.stderr and "Traceback" not in again.stderr


def test_recipe_lists_the_shape_questions(dataset, tmp_path):
    """prep/vqa-shape names the prepared samples of "What shape is it?" and nothing else."""
    from emu3_train import dataset as samples

    from shapes import recipe

    out, _ = dataset
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "vqa.json").write_bytes((out / "vqa.json").read_bytes())
    records = json.loads((out / "vqa.json").read_text())
    features = samples.feature_dir(run / "prep" / "vqa")
    features.mkdir(parents=True)
    names = [f"{i:08d}.ckpt" for i in range(len(records))]
    samples.write_list(samples.list_path(run / "prep" / "vqa"), features.resolve(), names, task="vqa")
    listed = samples.read_list(recipe.shape_questions(run))
    assert listed.task == "vqa" and listed.prefix == features.resolve()
    asked = [r["conversations"][0]["value"] for r in records]
    assert list(listed.files) == [n for n, q in zip(names, asked) if q == "<image>\nWhat shape is it?"]
    assert len(listed.files) == len(records) // len(world.questions(Scene("circle", "red", "blue", 20.0, 32.0, 32.0)))
    samples.write_list(samples.list_path(run / "prep" / "vqa"), features.resolve(), names[:-1], task="vqa")
    with pytest.raises(RuntimeError, match="samples for"):
        recipe.shape_questions(run)


class _ExactTokenizer:
    """A stand-in processor whose "codes" are the pixels themselves: an image is kept exactly; a
    video's latent frame i is its frame 4i+3, decoded as 4 copies of it."""

    class image_processor:  # noqa: N801 - the processor's attribute name
        @staticmethod
        def preprocess_video(frames):
            return np.stack([np.asarray(f) for f in frames])

    class vq_model:  # noqa: N801
        @staticmethod
        def encode(pixels):
            return pixels[:, 3::4]

    @staticmethod
    def encode_images(images):
        return [np.asarray(image) for image in images]

    @staticmethod
    def decode_codes(codes):
        return Image.fromarray(codes)

    @staticmethod
    def decode_video_codes(codes):
        return [Image.fromarray(frame) for frame in codes for _ in range(4)]


def test_score_reconstruction_reads_back_what_the_tokenizer_keeps(tmp_path):
    """A tokenizer that keeps every pixel scores every image right; its true video codes move the
    shape on (frame 7 against frame 3) and copying the first latent frame does not move it."""
    from shapes import evaluate

    out = tmp_path / "ds"
    data.write_dataset(out, seed=0, images=2, videos=2, heldout=12, image_size=32, shape_sizes=(14, 22),
                       progress=False)
    scenes, motions = evaluate.heldout_scenes(out), evaluate.heldout_motions(out)
    report = evaluate.score_reconstruction(_ExactTokenizer, out, scenes, motions)
    assert report["n_images"] == 12 and report["n_videos"] == len(motions) == 4
    assert report["background_accuracy"] == report["colour_accuracy"] == 1.0
    assert report["shape_accuracy"] >= 11 / 12  # measure's reading of clean 32 px shapes
    assert report["video_true_codes"]["direction_accuracy"] == 1.0
    assert report["video_true_codes"]["mean_moved_px"] > 2.0  # 4 frames at 1-1.5 px a frame
    assert report["video_copy"]["direction_accuracy"] == 0.0
    assert abs(report["video_copy"]["mean_moved_px"]) < 0.5
