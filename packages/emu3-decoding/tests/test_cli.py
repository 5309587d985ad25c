"""`emu3 generate ...` end to end, from tiny checkpoints (random weights; conftest)."""

import re

import numpy as np
import pytest
from emu3_vq import device, media
from emu3_vq.cli import main
from PIL import Image


def frames_dir(path, n, size=64):
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path / f"f{i:02d}.png")
    return path


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


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
    assert "emu3: seed" not in captured.err  # given, so not printed
    assert [p.name for p in out.parent.iterdir()] == ["cat.png"]  # no temporary file left
    meta = media.read_metadata(out)
    assert {k: meta[k] for k in ("prompt", "seed", "ratio", "image_area", "cfg_scale", "top_k", "model", "vq")} == {
        "prompt": "a cat", "seed": "3", "ratio": "2:1", "image_area": "8192", "cfg_scale": "3.0", "top_k": "2048",
        "model": lm, "vq": vq}
    assert "emu3-decoding" in meta["versions"] and "mindspore" in meta["versions"]


def argv_from_metadata(meta: dict, out) -> list[str]:
    """An `emu3 generate image` command line that asks for what the metadata records."""
    options = {"seed": "seed", "ratio": "ratio", "area": "image_area", "cfg": "cfg_scale",
               "negative": "negative_prompt", "top-k": "top_k", "model": "model", "vq": "vq"}
    return ["generate", "image", meta["prompt"], *[f"--{flag}={meta[key]}" for flag, key in options.items()],
            f"--out={out}", *(["--unbatched-cfg"] if meta["guidance"] == "unbatched" else [])]


@pytest.mark.slow  # ~45 s; test_generate_image checks one image and its metadata
def test_batches_and_the_metadata_round_trip(checkpoints, tmp_path, capsys, monkeypatch):
    """--prompts-file and --num-images: one file per image, numbered in order, each with its own
    seed (drawn, printed); the metadata of any of them given back makes it again, alone, also
    with the runtime flags (--device, --threads, --dtype fp32: the default here)."""
    lm, vq = checkpoints
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\n  a blue square  \n", encoding="utf-8")
    out = tmp_path / "img.png"
    assert main(["generate", "image", "--prompts-file", str(prompts), "--num-images", "2", "--area", "4096",
                 "--cfg", "2.5", "--top-k", "32", "--model", lm, "--vq", vq, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    paths = [tmp_path / f"img-{j}.png" for j in range(4)]
    assert captured.out.split() == [str(p) for p in paths]
    seed = int(re.search(r"emu3: seed (\d+) \(pass --seed \1 to reproduce\)", captured.err).group(1))
    metas = [media.read_metadata(p) for p in paths]
    assert [m["prompt"] for m in metas] == ["a red circle"] * 2 + ["a blue square"] * 2
    assert [int(m["seed"]) for m in metas] == [seed, seed + 1, seed + 2, seed + 3]
    assert {m["cfg_scale"] for m in metas} == {"2.5"} and {m["top_k"] for m in metas} == {"32"}
    assert not np.array_equal(pixels(paths[2]), pixels(paths[3]))

    selected = []
    monkeypatch.setattr(device, "select", lambda *a: selected.append(a))  # MindSpore's device is already set
    again = tmp_path / "again.png"
    assert main([*argv_from_metadata(metas[3], again), "--device", "cpu", "--threads", "1", "--dtype", "fp32"]) == 0
    assert selected == [("cpu", None, 1)]
    np.testing.assert_array_equal(pixels(again), pixels(paths[3]))
    assert "emu3: seed" not in capsys.readouterr().err


def test_answer_streams_and_samples(checkpoints, tmp_path, capsys):
    """The answer on stdout as it is produced (the same text as --no-stream, which shows a
    progress bar instead); sampling flags, with a drawn seed printed."""
    lm, vq = checkpoints
    image = tmp_path / "img.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(image)
    base = ["generate", "answer", str(image), "what is this?", "--max-new-tokens", "12", "--model", lm, "--vq", vq]
    assert main(base) == 0
    greedy = capsys.readouterr()
    assert greedy.out.strip() and "emu3: seed" not in greedy.err and "answer:" not in greedy.err

    sampled = [*base, "--temperature", "0.9", "--top-p", "0.95", "--top-k", "100"]
    assert main([*sampled, "--no-stream"]) == 0
    waited = capsys.readouterr()
    assert "answer:" in waited.err  # the progress bar instead of the text as it comes
    seed = re.search(r"emu3: seed (\d+) \(pass --seed \1 to reproduce\)", waited.err).group(1)
    assert main([*sampled, "--seed", seed]) == 0
    assert capsys.readouterr().out == waited.out  # streamed, the same text


def test_video_continue(checkpoints, tmp_path, capsys):
    lm, vq = checkpoints
    # 48x48 frames: the tokenizer works at 64x64 (its smallest area); new frames come back at 48x48
    src = frames_dir(tmp_path / "clip", 4, size=48)
    out = tmp_path / "next.gif"
    assert main(["generate", "video-continue", str(src), "--frames", "4", "--seed", "1", "--out", str(out),
                 "--prompt", "noise", "--model", lm, "--vq", vq]) == 0
    gif = Image.open(out)
    assert gif.n_frames == 4 and gif.size == (48, 48)
    pngs = sorted((tmp_path / "next_frames").glob("*.png"))
    assert len(pngs) == 4 and Image.open(pngs[0]).size == (48, 48)
    assert "rows 8/8" in capsys.readouterr().err  # one latent frame of 8 rows
    meta = media.read_metadata(out)
    assert (meta["prompt"], meta["seed"], meta["n_frames"], meta["fps"]) == ("noise", "1", "4", "8.0")


@pytest.mark.slow  # ~30 s; the GIF and frames outputs are test_video_continue's
def test_video_continue_mp4(checkpoints, tmp_path, capsys):
    """An MP4 in, an MP4 out, with the metadata."""
    pytest.importorskip("av")
    lm, vq = checkpoints
    rng = np.random.default_rng(1)
    clip = [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(4)]
    src = media.save_mp4(clip, tmp_path / "clip.mp4")
    out = tmp_path / "next.mp4"
    assert main(["generate", "video-continue", str(src), "--frames", "4", "--seed", "2", "--fps", "12",
                 "--out", str(out), "--model", lm, "--vq", vq]) == 0
    count, size = media.video_info(out)
    assert (count, size) == (4, (48, 48))
    assert media.read_metadata(out)["seed"] == "2"
    assert capsys.readouterr().out.split() == [str(out), str(tmp_path / "next_frames")]


@pytest.mark.parametrize("argv, message", [
    (["generate", "image", "x", "--ratio", "16-9"], "ratio"),
    (["generate", "image", "x", "--out", "x.jpg"], ".png"),
    (["generate", "image", "x", "--vq", "somewhere"], "--vq needs --model"),
    (["generate", "image", "x", "--revision", "v1"], "--revision needs --model"),
    (["generate", "image"], "give either PROMPT or --prompts-file"),
    (["generate", "image", "x", "--prompts-file", "p.txt"], "give either PROMPT or --prompts-file"),
    (["generate", "image", "--prompts-file", "missing.txt"], "missing.txt"),
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
