"""`emu3 generate ...` end to end, from tiny checkpoints built here (random weights)."""

import numpy as np
import pytest
from emu3_decoding.demo import build_demo_lm
from emu3_vq.cli import main
from emu3_vq.tiny import build_tiny_checkpoint
from PIL import Image


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return str(build_demo_lm(root / "lm", seed=1)), str(build_tiny_checkpoint(root / "vq", "tiny", seed=1))


def frames_dir(path, n, size=64):
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path / f"f{i:02d}.png")
    return path


def test_generate_image(checkpoints, tmp_path, capsys):
    lm, vq = checkpoints
    out = tmp_path / "out" / "cat.png"
    argv = ["generate", "image", "a cat", "--ratio", "2:1", "--area", str(128 * 64), "--seed", "3",
            "--model", lm, "--vq", vq, "--out", str(out)]
    assert main(argv) == 0
    image = Image.open(out)
    assert image.size == (128, 64)  # 2:1 at 8192 pixels: 8x16 tokens, 8 pixels each
    assert np.asarray(image).std() > 0
    captured = capsys.readouterr()
    assert str(out) in captured.out
    assert "tok/s" in captured.err and "rows 8/8" in captured.err
    assert [p.name for p in out.parent.iterdir()] == ["cat.png"]  # no temporary file left


def test_answer(checkpoints, tmp_path, capsys):
    lm, vq = checkpoints
    image = tmp_path / "img.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(image)
    assert main(["generate", "answer", str(image), "what is this?", "--max-new-tokens", "12",
                 "--model", lm, "--vq", vq]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip()  # some (untrained) text
    assert "answer:" in captured.err


def test_video_continue(checkpoints, tmp_path, capsys):
    lm, vq = checkpoints
    # 48x48 frames: the tokenizer works at 64x64 (its smallest area); new frames come back at 48x48
    src = frames_dir(tmp_path / "clip", 4, size=48)
    out = tmp_path / "next.gif"
    assert main(["generate", "video-continue", str(src), "--frames", "4", "--seed", "1", "--out", str(out),
                 "--model", lm, "--vq", vq]) == 0
    gif = Image.open(out)
    assert gif.n_frames == 4 and gif.size == (48, 48)
    pngs = sorted((tmp_path / "next_frames").glob("*.png"))
    assert len(pngs) == 4 and Image.open(pngs[0]).size == (48, 48)
    assert "rows 8/8" in capsys.readouterr().err  # one latent frame of 8 rows


@pytest.mark.parametrize("argv, message", [
    (["generate", "image", "x", "--ratio", "16-9"], "ratio"),
    (["generate", "image", "x", "--out", "x.jpg"], ".png"),
    (["generate", "image", "x", "--vq", "somewhere"], "--vq needs --model"),
    (["generate", "answer", "missing.png", "what?"], "missing.png"),
    (["generate", "video-continue", "missing_dir", "--frames", "4"], "missing_dir"),
])
def test_errors_before_any_model_is_loaded(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_frame_counts_are_checked(tmp_path, capsys):
    src = frames_dir(tmp_path / "clip", 3)
    assert main(["generate", "video-continue", str(src), "--frames", "4"]) == 2
    assert "multiple of 4" in capsys.readouterr().err
    src4 = frames_dir(tmp_path / "clip4", 4)
    assert main(["generate", "video-continue", str(src4), "--frames", "6"]) == 2
    assert "multiple of 4" in capsys.readouterr().err


def test_model_without_vision_tokenizer(checkpoints, tmp_path, capsys):
    lm, _ = checkpoints
    assert main(["generate", "image", "x", "--model", lm, "--out", str(tmp_path / "x.png")]) == 2
    assert "--vq" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
