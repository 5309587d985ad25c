"""emu3_vq.media: metadata in PNG, GIF and MP4, MP4 in and out (the optional extra `video`,
PyAV), and the one error when PyAV is missing."""

import sys

import numpy as np
import pytest
from PIL import Image

from emu3_vq import media

METADATA = {"model": "BAAI/Emu3-VisionTokenizer", "seed": "0", "Title": "café",  # Latin-1: tEXt
            "prompt": "un chat 猫 ✓"}  # beyond Latin-1: iTXt


def _flat_frames(n=8, size=(36, 32)):
    """Flat coloured frames, each its own colour."""
    return [Image.new("RGB", size, (20 + 25 * i, 200 - 20 * i, (90 * i) % 256)) for i in range(n)]


def _mean_abs_error(a, b):
    return np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean()


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.fixture
def av():
    return pytest.importorskip("av", reason="MP4 needs PyAV, the optional extra `video` (pip install av)")


@pytest.fixture
def no_av(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError


# ---- metadata -------------------------------------------------------------------------------

def test_png_metadata_round_trip_as_text_chunks(tmp_path):
    image = Image.new("RGB", (8, 6), (1, 2, 3))
    path = media.save_png(image, tmp_path / "a.png", metadata=METADATA)
    assert media.read_metadata(path) == METADATA
    data = path.read_bytes()
    assert data.count(b"tEXt") == 3 and data.count(b"iTXt") == 1  # iTXt only where Latin-1 cannot
    np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(image))
    assert media.read_metadata(media.save_png(image, tmp_path / "b.png")) == {}
    # reproducible: the same image and metadata give the same bytes
    assert media.save_png(image, tmp_path / "c.png", metadata=METADATA).read_bytes() == data


def test_gif_metadata_round_trip_as_json_comment(tmp_path):
    frames = _flat_frames(4)
    path = media.save_gif(frames, tmp_path / "a.gif", fps=10, metadata=METADATA)
    assert media.read_metadata(path) == METADATA
    with Image.open(path) as gif:
        assert gif.n_frames == 4 and gif.info["comment"].isascii()  # GIF comments are 7-bit text
    assert media.read_metadata(media.save_gif(frames, tmp_path / "b.gif")) == {}
    # a GIF made elsewhere: its comment as it is
    frames[0].save(tmp_path / "other.gif", save_all=True, append_images=frames[1:], comment=b"hello")
    assert media.read_metadata(tmp_path / "other.gif") == {"comment": "hello"}


@pytest.mark.parametrize("metadata,error,message", [
    ({"": "x"}, ValueError, "1 to 79 printable"),
    ({"k" * 80: "x"}, ValueError, "1 to 79 printable"),
    ({" key": "x"}, ValueError, "leading, trailing or double spaces"),
    ({"猫": "x"}, ValueError, "Latin-1"),
    ({"key": "a\0b"}, ValueError, "NUL"),
    ({"key": 1}, TypeError, "must be text"),
    (["key", "x"], TypeError, "must be a dict"),
])
def test_bad_metadata_is_refused_before_writing(tmp_path, metadata, error, message):
    frames = _flat_frames(2, (8, 8))
    for write, name in ((lambda p: media.save_png(frames[0], p, metadata=metadata), "a.png"),
                        (lambda p: media.save_gif(frames, p, metadata=metadata), "a.gif"),
                        (lambda p: media.save_video(frames, p, metadata=metadata), "a.mp4")):
        with pytest.raises(error, match=message):
            write(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_read_metadata_of_other_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        media.read_metadata(tmp_path / "absent.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "a.jpg")
    with pytest.raises(ValueError, match=r"\.png, \.gif and \.mp4"):
        media.read_metadata(tmp_path / "a.jpg")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read"):
        media.read_metadata(tmp_path / "bad.png")


def test_save_video_dispatches_on_the_suffix(tmp_path):
    frames = _flat_frames(3, (8, 8))
    assert media.save_video(frames, tmp_path / "a.GIF", fps=4, metadata={"k": "v"}) == tmp_path / "a.GIF"
    assert media.read_metadata(tmp_path / "a.GIF") == {"k": "v"}
    with pytest.raises(ValueError, match=r"use a \.gif or \.mp4 name"):
        media.save_video(frames, tmp_path / "a.avi")


# ---- MP4 ------------------------------------------------------------------------------------

# Flat coloured frames come back within a mean absolute error of 4 (of 255) per frame: the
# conversion to yuv420p and back rounds each channel by up to ~2 levels (measured: 2.0 with
# libx264 at CRF 18, 2.3 with mpeg4); the codec adds next to nothing on flat frames.
MP4_MEAN_ABS_ERROR = 4.0


@pytest.mark.parametrize("codec", ["auto", "mpeg4"])
def test_mp4_round_trip(av, tmp_path, monkeypatch, codec):
    if codec == "mpeg4":
        monkeypatch.setattr(media, "mp4_codec", lambda av=None: "mpeg4")  # the fallback encoder
    frames = _flat_frames(8, (36, 32))
    path = media.save_video(frames, tmp_path / "clip.mp4", fps=12.5, metadata=METADATA)
    assert media.is_video_path(path)
    assert media.video_info(path) == (8, (36, 32))
    assert media.check_video(path) == (8, (36, 32))
    back = media.load_frames(path)
    assert len(back) == 8 and all(f.mode == "RGB" and f.size == (36, 32) for f in back)
    errors = [_mean_abs_error(a, b) for a, b in zip(back, frames)]
    assert max(errors) <= MP4_MEAN_ABS_ERROR, errors
    assert media.read_metadata(path) == METADATA
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 12.5
        assert stream.codec_context.name == ("mpeg4" if codec == "mpeg4" else
                                             "h264" if "libx264" in av.codecs_available else "mpeg4")
    assert _leftovers(tmp_path) == []


def test_mp4_rewrite_is_the_same_video_and_atomic(av, tmp_path, monkeypatch):
    # Not byte-identical: the encoder's bitstream may differ between runs on some machines.
    frames = _flat_frames(4, (16, 16))
    first = media.save_mp4(frames, tmp_path / "a.mp4", metadata={"seed": "0"}).read_bytes()
    again = media.save_mp4(frames, tmp_path / "b.mp4", metadata={"seed": "0"})
    assert media.read_metadata(again)["seed"] == "0"
    assert media.read_metadata(tmp_path / "a.mp4")["seed"] == "0"
    decoded = [media.load_frames(tmp_path / name) for name in ("a.mp4", "b.mp4")]
    assert len(decoded[0]) == len(decoded[1]) == 4
    for a, b, frame in zip(*decoded, frames):
        assert _mean_abs_error(a, frame) < 3 and _mean_abs_error(a, b) < 3
    assert media.read_metadata(media.save_mp4(frames, tmp_path / "c.mp4"))["major_brand"]  # its own tags

    def broken(image):
        raise KeyboardInterrupt

    monkeypatch.setattr(av.VideoFrame, "from_image", broken)  # interrupted while encoding
    with pytest.raises(KeyboardInterrupt):
        media.save_mp4(frames, tmp_path / "a.mp4")
    assert (tmp_path / "a.mp4").read_bytes() == first  # the old file, untouched
    assert _leftovers(tmp_path) == []


def test_mp4_odd_and_mixed_sizes_are_refused(av, tmp_path):
    with pytest.raises(ValueError, match="even width and height, got 35x32"):
        media.save_video(_flat_frames(4, (35, 32)), tmp_path / "odd.mp4")
    with pytest.raises(ValueError, match="even width and height, got 36x33"):
        media.save_mp4(_flat_frames(4, (36, 33)), tmp_path / "odd.mp4")
    with pytest.raises(ValueError, match="frame 1 is 34x32 pixels but frame 0 is 36x32"):
        media.save_mp4([*_flat_frames(1, (36, 32)), *_flat_frames(1, (34, 32))], tmp_path / "mixed.mp4")
    with pytest.raises(ValueError, match="no frames to write"):
        media.save_mp4([], tmp_path / "empty.mp4")
    assert list(tmp_path.iterdir()) == []
    media.check_mp4_size(36, 32)


@pytest.mark.parametrize("fps", [0, 1000, float("nan"), True])
def test_mp4_fps_is_checked_like_gif(av, tmp_path, fps):
    with pytest.raises(ValueError, match="fps must be a number from 0.01 to 100"):
        media.save_video(_flat_frames(2, (8, 8)), tmp_path / "a.mp4", fps=fps)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_mp4(av, tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    for read in (media.video_info, media.check_video, media.load_frames, media.read_metadata):
        with pytest.raises(ValueError, match="cannot read video"):
            read(tmp_path / "bad.mp4")
    with pytest.raises(FileNotFoundError, match="video not found"):
        media.load_frames(tmp_path / "absent.mp4")
    (tmp_path / "frames.mp4").mkdir()  # a folder named .mp4 is a folder of frames
    Image.new("RGB", (8, 8)).save(tmp_path / "frames.mp4" / "0.png")
    assert media.video_info(tmp_path / "frames.mp4") == (1, (8, 8))


def test_mp4_without_pyav_is_one_clear_error(no_av, tmp_path):
    frames = _flat_frames(4, (16, 16))
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 64)
    assert media.is_video_path(tmp_path / "clip.mp4")  # still a video; reading it needs the extra
    calls = [lambda: media.load_frames(tmp_path / "clip.mp4"),
             lambda: media.check_video(tmp_path / "clip.mp4"),
             lambda: media.video_info(tmp_path / "clip.mp4"),
             lambda: media.read_metadata(tmp_path / "clip.mp4"),
             lambda: media.save_video(frames, tmp_path / "out.mp4")]
    for call in calls:
        with pytest.raises(media.MissingVideoSupport, match=r"pip install 'emu3-vq\[video\]'") as info:
            call()
        assert isinstance(info.value, ImportError) and isinstance(info.value, ValueError)
    assert not (tmp_path / "out.mp4").exists()
    media.save_video(frames, tmp_path / "out.gif")  # GIF needs no PyAV
    assert media.load_frames(tmp_path / "out.gif")[0].size == (16, 16)
