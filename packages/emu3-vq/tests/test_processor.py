"""Emu3ImageProcessor: smart_resize by hand, config files, and parity with transformers."""

import json

import numpy as np
import pytest
from PIL import Image

from emu3_vq import media
from emu3_vq.processor import CLIP_MEAN, Emu3ImageProcessor, smart_resize


def _image(width, height, seed=0, mode="RGB"):
    """A smooth gradient plus noise, so that resampling differences would show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (3 * x + 2 * y) % 256], -1)
    if mode == "RGBA":
        base = np.concatenate([base, (x * 7 % 256)[..., None]], -1)
    arr = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode)


# ---- smart_resize ---------------------------------------------------------------------------

def test_smart_resize_by_hand():
    # inside [512^2, 1024^2]: sides rounded to multiples of 8 (480 = 60*8, 640 = 80*8)
    assert smart_resize(480, 640) == (480, 640)
    assert smart_resize(483, 645) == (480, 648)  # 60.375 -> 60, 80.625 -> 81
    # too small: 200x304 after rounding (37.5 -> 38, half to even); beta = sqrt(512^2 / 60000)
    # = 2.0902; ceil(200*2.0902/8) = 53 -> 424, ceil(300*2.0902/8) = 79 -> 632
    assert smart_resize(200, 300) == (424, 632)
    # too large: beta = sqrt(1200*1800 / 1024^2) = 1.4352; floor(1200/1.4352/8) = 104 -> 832,
    # floor(1800/1.4352/8) = 156 -> 1248
    assert smart_resize(1200, 1800) == (832, 1248)
    # Python's round is half to even: 100/8 = 12.5 -> 12, 36/8 = 4.5 -> 4
    assert smart_resize(100, 36, min_pixels=0) == (96, 32)
    # a smaller factor and limits (the micro demo model): beta = sqrt(1024 / 600) = 1.3064,
    # ceil(20*1.3064/2) = 14 -> 28, ceil(30*1.3064/2) = 20 -> 40; and beta = sqrt(15000 / 4096)
    # = 1.9137, floor(100/1.9137/2) = 26 -> 52, floor(150/1.9137/2) = 39 -> 78
    assert smart_resize(30, 50, factor=2, min_pixels=32 * 32, max_pixels=64 * 64) == (30, 50)
    assert smart_resize(20, 30, factor=2, min_pixels=32 * 32, max_pixels=64 * 64) == (28, 40)
    assert smart_resize(100, 150, factor=2, min_pixels=32 * 32, max_pixels=64 * 64) == (52, 78)


def test_smart_resize_rejects_small_and_elongated():
    with pytest.raises(ValueError, match="too small.*at least 8"):
        smart_resize(7, 100)
    with pytest.raises(ValueError, match="too elongated.*5.01"):
        smart_resize(100, 501)
    assert smart_resize(100, 500)  # exactly 5 is allowed
    assert smart_resize(100, 900, max_ratio=10)
    proc = Emu3ImageProcessor(max_aspect_ratio=2.0)
    with pytest.raises(ValueError, match="exceeds 2"):
        proc.preprocess(_image(100, 40))
    with pytest.raises(ValueError, match="too small"):
        Emu3ImageProcessor().preprocess(_image(6, 40))


# ---- configuration files --------------------------------------------------------------------

def test_reads_original_layout(tmp_path):
    original = {  # the keys BAAI/Emu3-VisionTokenizer's processor class writes
        "auto_map": {"AutoImageProcessor": "image_processing_emu3visionvq.Emu3VisionVQImageProcessor"},
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "Emu3VisionVQImageProcessor",
        "max_pixels": 1048576, "min_pixels": 262144, "resample": 3,
        "rescale_factor": 0.00392156862745098, "spatial_factor": 8,
        "size": {"max_pixels": 1048576, "min_pixels": 262144},
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(original))
    proc = Emu3ImageProcessor.from_pretrained(tmp_path)
    assert proc == Emu3ImageProcessor(extra={"auto_map": original["auto_map"]})
    out = tmp_path / "out"
    proc.save_pretrained(out)
    written = json.loads((out / "preprocessor_config.json").read_text())
    assert {k: v for k, v in written.items() if k != "max_aspect_ratio"} == original
    assert Emu3ImageProcessor.from_pretrained(out / "preprocessor_config.json") == proc


def test_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        Emu3ImageProcessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        Emu3ImageProcessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5]}))
    with pytest.raises(ValueError, match='"image_mean" must have 3'):
        Emu3ImageProcessor.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="min_pixels"):
        Emu3ImageProcessor(min_pixels=100, max_pixels=10)


# ---- batches, videos, postprocess ----------------------------------------------------------

def test_preprocess_values_by_hand():
    proc = Emu3ImageProcessor(min_pixels=0)
    arr = np.zeros((16, 24, 3), np.uint8)
    arr[..., 0] = 255
    arr[..., 2] = 51
    x = proc.preprocess(arr)
    assert x.shape == (1, 3, 16, 24) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], 1.0)  # (1 - 0.5) / 0.5
    np.testing.assert_allclose(x[0, 1], -1.0)
    np.testing.assert_allclose(x[0, 2], 51 / 255 * 2 - 1, rtol=1e-6)


def test_batches_and_videos():
    proc = Emu3ImageProcessor(min_pixels=0, max_pixels=10**6)
    a, b = _image(64, 48), _image(40, 80, seed=1)
    with pytest.raises(ValueError, match="preprocess_batch"):
        proc.preprocess([a, b])
    pixels, sizes = proc.preprocess_batch([a, b])
    assert sizes == [(48, 64), (80, 40)] and pixels.shape == (2, 3, 80, 64)
    np.testing.assert_array_equal(pixels[0, :, :48, :64], proc.preprocess(a)[0])
    np.testing.assert_array_equal(pixels[1, :, :80, :40], proc.preprocess(b)[0])
    assert not pixels[0, :, 48:].any() and not pixels[1, :, :, 40:].any()  # zero padding
    images = proc.postprocess(pixels, sizes=sizes)
    assert [im.size for im in images] == [(64, 48), (40, 80)]

    frames = [_image(50, 30, seed=i) for i in range(4)]
    video = proc.preprocess_video(frames)
    assert video.shape == (4, 3, 32, 48)
    np.testing.assert_array_equal(video[2], proc.preprocess(frames[2])[0])
    with pytest.raises(ValueError, match="frame 3 is 30x50"):
        proc.preprocess_video(frames[:3] + [_image(30, 50)])


def test_postprocess_round_trip():
    proc = Emu3ImageProcessor(min_pixels=0)
    image = _image(48, 40, seed=5)  # already a multiple of 8 and in range: no resampling
    back = proc.postprocess(proc.preprocess(image))[0]
    diff = np.asarray(image).astype(int) - np.asarray(back).astype(int)
    # truncation to uint8 (not rounding, as in the original) may lose at most one level
    assert diff.min() >= 0 and diff.max() <= 1
    assert (diff == 0).mean() > 0.5
    video = proc.postprocess(np.zeros((2, 4, 3, 8, 8), np.float32))  # [B, T, 3, H, W] -> 8 frames
    assert len(video) == 8 and video[0].getpixel((0, 0)) == (127, 127, 127)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, H, W\]"):
        proc.postprocess(np.zeros((2, 8, 8)))


# ---- media ------------------------------------------------------------------------------------

def test_frames_folder_gif_and_errors(tmp_path):
    frames = [_image(20, 16, seed=i) for i in range(5)]
    folder = tmp_path / "clip"
    folder.mkdir()
    for i, frame in enumerate(frames):  # natural order: frame_2 before frame_10
        frame.save(folder / f"frame_{[0, 1, 2, 10, 11][i]}.png")
    (folder / "notes.txt").write_text("ignored")
    loaded = media.load_frames(folder)
    assert len(loaded) == 5
    for a, b in zip(loaded, frames):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    gif = media.save_gif(frames, tmp_path / "clip.gif", fps=10)
    back = media.load_frames(gif)
    assert len(back) == 5 and all(f.mode == "RGB" and f.size == (20, 16) for f in back)
    assert media.is_video_path(gif) and media.is_video_path(folder)
    assert not media.is_video_path(tmp_path / "a.png")
    written = media.save_frames(back, tmp_path / "out")
    assert [p.name for p in written][:2] == ["frame_0000.png", "frame_0001.png"]

    with pytest.raises(FileNotFoundError, match="missing.png"):
        media.load_image(tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError, match="nothing"):
        media.load_frames(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no frame images"):
        media.load_frames(tmp_path / "empty")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        media.load_image(tmp_path / "broken.png")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_save_png_is_atomic(tmp_path, monkeypatch):
    image = _image(8, 8)
    path = media.save_png(image, tmp_path / "a.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(image))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError):
        media.save_png(image, tmp_path / "b.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_rgba_composited_on_white():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:4, :, 3] = 255  # top half opaque red-ish, bottom half fully transparent
    x = Emu3ImageProcessor(min_pixels=0).postprocess(
        Emu3ImageProcessor(min_pixels=0).preprocess(Image.fromarray(rgba, "RGBA")))[0]
    px = np.asarray(x)
    assert tuple(px[0, 0]) == (200, 0, 0) and tuple(px[7, 7]) == (255, 255, 255)


# ---- parity with transformers ----------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_module():
    return pytest.importorskip("transformers.models.emu3.image_processing_emu3")


PARITY_SIZES = [  # (width, height)
    (640, 480),  # inside the limits
    (333, 517),  # non-square, odd sides
    (300, 200),  # up-scaled past min_pixels
    (1800, 1200),  # down-scaled past max_pixels
    (1000, 250),  # aspect ratio 4
]


@pytest.mark.parity
@pytest.mark.parametrize("mean_std", ["original", "clip"])
def test_preprocess_matches_transformers(hf_module, mean_std):
    if mean_std == "original":
        ours = Emu3ImageProcessor()
        hf = hf_module.Emu3ImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    else:
        ours = Emu3ImageProcessor(image_mean=CLIP_MEAN, image_std=hf_module.OPENAI_CLIP_STD)
        hf = hf_module.Emu3ImageProcessor()
    worst = 0.0
    for i, (w, h) in enumerate(PARITY_SIZES):
        image = _image(w, h, seed=i, mode="RGBA" if i == 1 else "RGB")
        expected = hf.preprocess(image, return_tensors="np")
        got = ours.preprocess(image)
        assert got.shape == expected["pixel_values"].shape, (w, h)
        assert [tuple(s) for s in expected["image_sizes"]] == [got.shape[2:]]
        worst = max(worst, float(np.abs(got - expected["pixel_values"]).max()))
        # both resize with PIL bicubic on uint8, then scale in float64 -> float32
        back = ours.postprocess(got)[0]
        hf_back = hf.postprocess(expected["pixel_values"], return_tensors="PIL.Image.Image")
        hf_back = hf_back["pixel_values"][0]
        np.testing.assert_array_equal(np.asarray(back), np.asarray(hf_back))
    print(f"max |ours - transformers| over {len(PARITY_SIZES)} images ({mean_std}): {worst:.3g}")
    assert worst <= 1e-6


@pytest.mark.parity
def test_batch_padding_matches_transformers(hf_module):
    ours = Emu3ImageProcessor(min_pixels=64 * 64, max_pixels=256 * 256)
    hf = hf_module.Emu3ImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                      min_pixels=64 * 64, max_pixels=256 * 256)
    images = [_image(120, 90), _image(50, 140, seed=1), _image(300, 300, seed=2)]
    pixels, sizes = ours.preprocess_batch(images)
    expected = hf.preprocess(images, return_tensors="np")
    assert sizes == [tuple(int(v) for v in s) for s in expected["image_sizes"]]
    assert np.abs(pixels - expected["pixel_values"]).max() <= 1e-6


@pytest.mark.parity
def test_smart_resize_matches_transformers_where_both_accept(hf_module):
    rng = np.random.default_rng(0)
    checked = 0
    for h, w in rng.integers(8, 3000, size=(600, 2)):
        if max(h, w) / min(h, w) > 5:
            continue
        expected = hf_module.smart_resize(int(h), int(w), factor=8, min_pixels=512 * 512,
                                          max_pixels=1024 * 1024)
        assert smart_resize(int(h), int(w)) == expected, (h, w)
        checked += 1
    assert checked > 200


@pytest.mark.parity
def test_config_files_interchange_with_transformers(hf_module, tmp_path):
    hf = hf_module.Emu3ImageProcessor(min_pixels=100 * 100, max_pixels=300 * 300)
    hf.save_pretrained(tmp_path / "hf")
    ours = Emu3ImageProcessor.from_pretrained(tmp_path / "hf")
    assert ours.image_processor_type == "Emu3ImageProcessor"
    assert (ours.min_pixels, ours.max_pixels, ours.spatial_factor) == (100 * 100, 300 * 300, 8)
    np.testing.assert_allclose(ours.image_mean, hf.image_mean)
    np.testing.assert_allclose(ours.image_std, hf.image_std)
    ours.save_pretrained(tmp_path / "ours")
    again = hf_module.Emu3ImageProcessor.from_pretrained(tmp_path / "ours")
    image = _image(200, 150)
    np.testing.assert_array_equal(again.preprocess(image, return_tensors="np")["pixel_values"],
                                  ours.preprocess(image))
    # a transformers file that leaves out mean/std means transformers' (CLIP) defaults
    d = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    del d["image_mean"], d["image_std"]
    assert Emu3ImageProcessor.from_dict(d).image_mean == CLIP_MEAN
