"""Nothing lost, nothing silent: every argument is checked before any work, by the API and by
`emu3 generate` (`emu3_vq.cli.main`), with a one-line error naming the argument or option and
nothing left behind; a generation whose logits are not finite stops with an error.

Tiny models only: the 'tiny' LM (conftest), the tiny tokenizer, and for the command the demo
LM and the tiny vision tokenizer (conftest's `checkpoints`, random weights).
"""

import os
import shutil
import types

import numpy as np
import pytest
from emu3_decoding import image as image_module
from emu3_decoding import loop
from emu3_decoding.demo import random_lm_state
from emu3_decoding.guidance import check_scale
from emu3_decoding.image import generate_image
from emu3_decoding.sampling import Sampling
from emu3_decoding.video import continue_video
from emu3_decoding.vqa import answer
from emu3_lm.blocks import image_table
from emu3_lm.config import Emu3LMConfig
from emu3_lm.model import Emu3ForCausalLM
from emu3_lm.processor import Emu3Processor
from emu3_lm.tiny_assets import build_tiktoken_tokenizer
from emu3_lm.tokenizer import Emu3Tokenizer
from emu3_vq.cli import main
from emu3_vq.processor import Emu3ImageProcessor
from emu3_vq.weights import write_checkpoint
from PIL import Image

NAN, INF = float("nan"), float("inf")


# ---- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return Emu3Tokenizer.from_pretrained(build_tiktoken_tokenizer(tmp_path_factory.mktemp("tok"),
                                                                  num_visual_tokens=64))


@pytest.fixture(scope="module")
def processor(tokenizer):
    """A processor with a stand-in VQ that cannot encode or decode: any call that gets past the
    checks to real work fails with AttributeError, which the tests would see."""
    vq = types.SimpleNamespace(config=types.SimpleNamespace(temporal_downsample_factor=4, spatial_factor=8,
                                                            codebook_size=64))
    return Emu3Processor(Emu3ImageProcessor(), vq, tokenizer, image_area=64 * 64)


@pytest.fixture(scope="module")
def nan_model():
    """The tiny LM with one NaN in a text row and one in a visual row of lm_head (set after
    loading: the loader may refuse non-finite weights, this is the runtime guard)."""
    from mindspore import Tensor, ops

    cfg = Emu3LMConfig.from_name("tiny", initializer_range=0.1)
    model = Emu3ForCausalLM(cfg, init_weights=False)
    model.load_state_dict(random_lm_state(cfg, seed=0))
    w = model.lm_head.weight.asnumpy().copy()
    w[5, 0] = np.nan
    w[cfg.first_visual_token_id + 3, 0] = np.nan
    ops.assign(model.lm_head.weight, Tensor(w))
    model.set_train(False)
    return model


@pytest.fixture(scope="module")
def overflowing_lm(checkpoints, tmp_path_factory):
    """The demo LM with finite weights whose logits overflow fp32 (final norm and lm_head at 1e20:
    logits near 1e40 = inf): the load-time checks pass, the runtime guard must stop it."""
    lm = tmp_path_factory.mktemp("overflow") / "lm"
    shutil.copytree(checkpoints[0], lm)
    state = random_lm_state(Emu3LMConfig.from_name("tiny"), seed=1)
    state["model.norm.weight"][:] = 1e20
    state["lm_head.weight"] = np.where(state["lm_head.weight"] >= 0, 1e20, -1e20).astype(np.float32)
    write_checkpoint(lm, state)
    return str(lm)


def files(directory) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def run(argv, capsys) -> str:
    """`emu3 ...` that must fail: exit status 2 and one error line, no traceback; returns it. An
    option is refused by argparse as it is parsed (`emu3 generate image: error: argument --cfg:
    ...`, after the usage line), anything else by the command (`emu3: error: ...`)."""
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error: " in line]
    assert len(lines) == 1, err
    return lines[0]


# ---- API: numeric arguments ----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": NAN}, "temperature must be a finite number, got nan"),
    ({"temperature": INF}, "temperature must be a finite number, got inf"),
    ({"temperature": -1.0}, "temperature must be >= 0, got -1.0"),
    ({"top_p": NAN}, "top_p must be a finite number, got nan"),
    ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0"),
    ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
    ({"top_k": -1}, "top_k must be an integer >= 0, got -1"),
    ({"top_k": 2.5}, "top_k must be an integer >= 0, got 2.5"),
])
def test_sampling_refuses_what_would_sample_noise(kwargs, message):
    """API: Sampling, the one place of the temperature, top-k and top-p rules."""
    with pytest.raises(ValueError) as err:
        Sampling(**kwargs)
    assert str(err.value) == message


@pytest.mark.parametrize("scale", [NAN, INF, -INF, "3"])
def test_guidance_scale_must_be_finite(tiny_model, ids, scale):
    """API: loop.generate (and guidance.check_scale, its one rule)."""
    p = [[ids.bos, 11, ids.boi, 52, ids.img]]
    with pytest.raises(ValueError, match="cfg_scale must be a finite number"):
        loop.generate(tiny_model, p, negative_prompts=p, cfg_scale=scale, table=image_table(2, 2, ids))
    assert check_scale(2) == 2.0


@pytest.mark.parametrize("kwargs, message", [
    ({"cfg_scale": NAN}, "cfg_scale must be a finite number, got nan"),
    ({"cfg_scale": INF}, "cfg_scale must be a finite number, got inf"),
    ({"temperature": NAN}, "temperature must be a finite number, got nan"),
    ({"top_p": NAN}, "top_p must be a finite number, got nan"),
    ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ({"image_area": NAN}, "image_area must be a positive number of pixels, got nan"),
    ({"image_area": 10 ** 12}, "context of 1024 positions; an image of 125000x125000 tokens is too large"),
])
def test_generate_image_checks_before_any_work(tiny_model, processor, kwargs, message):
    """API: generate_image. The stand-in VQ cannot decode, so reaching the work would fail
    otherwise; an area of 10^12 pixels is refused without allocating its table."""
    with pytest.raises(ValueError) as err:
        generate_image(tiny_model, processor, "a cat", **kwargs)
    assert message in str(err.value)


def test_continue_video_reads_a_path_and_checks_before_encoding(tiny_model, processor, tmp_path):
    """API: continue_video. A path is read as a video (not as a sequence of characters); counts,
    numbers and the length against the context are checked before a frame is encoded."""
    frames = [Image.fromarray(np.full((64, 64, 3), 80 * i, np.uint8)) for i in range(3)]
    three = tmp_path / "three.gif"
    frames[0].save(three, save_all=True, append_images=frames[1:])
    frame = frames[0]
    with pytest.raises(ValueError, match="number of input frames must be a positive multiple of 4.*got 3"):
        continue_video(tiny_model, processor, str(three), 4)
    with pytest.raises(FileNotFoundError, match="missing.gif"):
        continue_video(tiny_model, processor, tmp_path / "missing.gif", 4)
    with pytest.raises(TypeError, match="a list of frames or a path, got a single image"):
        continue_video(tiny_model, processor, frame, 4)
    clip = [frame] * 4
    with pytest.raises(ValueError, match="cfg_scale must be a finite number, got nan"):
        continue_video(tiny_model, processor, clip, 4, cfg_scale=NAN)
    with pytest.raises(ValueError, match="n_frames must be a positive multiple of 4.*got 4.0"):
        continue_video(tiny_model, processor, clip, 4.0)
    # the default image processor makes 512x512 pixels of a 64x64 frame: 64x64 tokens per latent frame
    with pytest.raises(ValueError, match="context of 1024 positions; 4 \\+ 4 frames of 64x64 tokens"):
        continue_video(tiny_model, processor, clip, 4)


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ({"max_new_tokens": 0}, "max_new_tokens must be a positive int, got 0"),
])
def test_answer_checks_before_encoding(tiny_model, processor, kwargs, message):
    """API: answer (the stand-in VQ would fail on encoding)."""
    with pytest.raises(ValueError, match=message):
        answer(tiny_model, processor, Image.new("RGB", (64, 64)), "what?", **kwargs)


# ---- API: non-finite logits --------------------------------------------------------------------------

def test_non_finite_logits_stop_an_image_at_its_first_position(nan_model, ids):
    """API: loop.generate with a table. The flag is read after the first sampled position: the
    call stops there (no progress reported), instead of decoding the block to its end."""
    events = []
    p = [[ids.bos, 11, ids.boi, 52, ids.img]]
    with pytest.raises(ValueError, match=r"logits are not finite \(NaN or inf\) for row\(s\) 0"):
        loop.generate(nan_model, p, table=image_table(4, 4, ids), sampling=Sampling(top_k=8), seed=0,
                      progress=events.append)
    assert events == []
    with pytest.raises(ValueError, match="not finite"):  # guided: both branches carry the NaN
        loop.generate(nan_model, p, negative_prompts=p, cfg_scale=3.0, table=image_table(4, 4, ids), seed=0)


def test_non_finite_logits_stop_free_text(nan_model, ids):
    """API: loop.generate without a table (greedy text over the whole vocabulary)."""
    with pytest.raises(ValueError, match="logits are not finite"):
        loop.generate(nan_model, [[ids.bos, 11, 12]], max_new_tokens=8)


# ---- the command: options ---------------------------------------------------------------------------

SCALE = "argument --cfg: the guidance scale must be a finite number"
FPS = "argument --fps: fps must be a number from 0.01 to 100"


@pytest.mark.parametrize("argv, message", [
    (["image", "x", "--cfg", "nan"], f"{SCALE}, got nan"),
    (["image", "x", "--cfg", "inf"], f"{SCALE}, got inf"),
    (["image", "x", "--seed", "-1"], "argument --seed: must be an integer >= 0, got -1"),
    (["image", "x", "--top-k", "-1"], "argument --top-k: must be an integer >= 0, got -1"),
    (["image", "x", "--area", "0"], "argument --area: must be an integer >= 1, got 0"),
    (["video-continue", "clip", "--frames", "4", "--fps", "0"], f"{FPS}"),
    (["video-continue", "clip", "--frames", "4", "--fps", "nan"], f"{FPS}"),
    (["video-continue", "clip", "--frames", "4", "--seed", "-1"], "argument --seed: must be an integer >= 0"),
    (["video-continue", "clip", "--frames", "6"], "emu3: error: --frames must be a positive multiple of 4"),
    (["answer", "img.png", "what?", "--max-new-tokens", "0"], "argument --max-new-tokens: must be an"),
    (["answer", "img.png", "what?", "--temperature", "nan"],
     "argument --temperature: the temperature must be a finite number, got nan"),
    (["answer", "img.png", "what?", "--temperature", "-1"], "argument --temperature: the temperature must be >= 0"),
    (["answer", "img.png", "what?", "--top-p", "0"], "argument --top-p: top-p must be in (0, 1], got 0.0"),
    (["answer", "img.png", "what?", "--top-k", "-2"], "argument --top-k: must be an integer >= 0, got -2"),
    (["image", "x", "--num-images", "0"], "argument --num-images: must be an integer >= 1, got 0"),
    (["image", "x", "--dtype", "fp64"], "argument --dtype: invalid choice: 'fp64'"),
    (["image", "x", "--threads", "0"], "argument --threads: must be an integer >= 1, got 0"),
    (["image", "x", "--device-id", "1"], "emu3: error: --device-id needs --device"),
    (["image", "x", "--revision", "v1"], "emu3: error: --revision needs --model naming a hub repo id"),
    (["image", "x", "--prompts-file", "p.txt"], "emu3: error: give either PROMPT or --prompts-file FILE"),
])
def test_options_are_checked_before_anything(argv, message, tmp_path, monkeypatch, capsys):
    """CLI: each bad option is named in one line; nothing is written (not even the demo model)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert message in run(["generate", *argv], capsys)
    assert files(tmp_path) == []


# ---- the command: outputs ----------------------------------------------------------------------------

def test_existing_output_needs_overwrite(checkpoints, tmp_path, capsys, monkeypatch):
    """CLI: `emu3 generate image --out existing.png` refuses up front; --overwrite replaces it
    (the generation itself stubbed out: test_cli runs a real one)."""
    lm, vq = checkpoints
    out = tmp_path / "existing.png"
    out.write_bytes(b"keep me")
    argv = ["generate", "image", "x", "--area", "4096", "--seed", "0", "--model", lm, "--vq", vq,
            "--out", str(out)]
    assert "already exists; pass --overwrite" in run(argv, capsys)
    assert out.read_bytes() == b"keep me"
    monkeypatch.setattr(image_module, "generate_image", lambda *a, **k: [Image.new("RGB", (64, 64), "red")])
    assert main([*argv, "--overwrite"]) == 0
    assert Image.open(out).size == (64, 64)
    assert files(tmp_path) == ["existing.png"]  # no temporary file left


def test_every_output_of_a_batch_is_checked_first(tmp_path, capsys):
    """CLI: `--num-images 3 --out img.png` writes img-0.png .. img-2.png: any of them existing
    is refused before anything is read or generated."""
    (tmp_path / "img-2.png").write_bytes(b"keep me")
    assert "img-2.png already exists; pass --overwrite" in run(
        ["generate", "image", "x", "--num-images", "3", "--out", str(tmp_path / "img.png")], capsys)
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    assert "holds no prompt (one per line)" in run(
        ["generate", "image", "--prompts-file", str(empty), "--out", str(tmp_path / "a.png")], capsys)
    assert files(tmp_path) == ["img-2.png", "prompts.txt"]


def test_greedy_answers_take_no_sampling_options(checkpoints, tmp_path, capsys, monkeypatch):
    """CLI: --top-k or --top-p without --temperature (the answer would be greedy, and they would
    change nothing) is refused from the configs, before the weights load."""
    lm, vq = checkpoints
    monkeypatch.setattr(Emu3ForCausalLM, "from_pretrained", classmethod(lambda cls, *a, **k: pytest.fail("loaded")))
    image = tmp_path / "img.png"
    Image.new("RGB", (32, 32)).save(image)
    assert "top_k and top_p apply when sampling: pass a temperature > 0" in run(
        ["generate", "answer", str(image), "what?", "--top-k", "5", "--model", lm, "--vq", vq], capsys)


def test_unwritable_outputs_are_refused_up_front(tmp_path, capsys):
    """CLI: an --out under a regular file is found before any model is loaded."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "is not a directory (--out)" in run(["generate", "image", "x", "--out", str(blocker / "a.png")],
                                               capsys)
    assert files(tmp_path) == ["file"]


@pytest.mark.skipif(os.access("/sys", os.W_OK), reason="/sys is writable here")
def test_read_only_output_directory_is_refused(capsys):
    assert "/sys is not writable (--out)" in run(["generate", "image", "x", "--out", "/sys/a.png"], capsys)


def frames_dir(path, n=4, size=64):
    path.mkdir()
    for i in range(n):
        Image.fromarray(np.full((size, size, 3), 40 * i, np.uint8)).save(path / f"f{i}.png")
    return path


def test_video_outputs_follow_the_same_policy(tmp_path, capsys):
    """CLI: video-continue writes a GIF and a frames folder; either existing is refused, and
    neither may be the input."""
    clip = frames_dir(tmp_path / "clip")
    (tmp_path / "next_frames").mkdir()
    message = run(["generate", "video-continue", str(clip), "--frames", "4",
                   "--out", str(tmp_path / "next.gif")], capsys)
    assert "next_frames already exists; pass --overwrite" in message
    frames_in = frames_dir(tmp_path / "in_frames")  # --out in.gif would write its frames there
    assert "would overwrite an input" in run(
        ["generate", "video-continue", str(frames_in), "--frames", "4", "--out", str(tmp_path / "in.gif"),
         "--overwrite"], capsys)
    assert files(tmp_path) == sorted(["clip", *[f"clip/f{i}.png" for i in range(4)], "next_frames",
                                      "in_frames", *[f"in_frames/f{i}.png" for i in range(4)]])


# ---- the command: inputs and the model's context ----------------------------------------------------

def test_inputs_are_checked_before_loading(tmp_path, capsys):
    """CLI: a folder given as an image, an unreadable image."""
    (tmp_path / "folder.png").mkdir()
    assert "expected an image file, got a directory" in run(
        ["generate", "answer", str(tmp_path / "folder.png"), "what?"], capsys)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert f"cannot read image {tmp_path / 'broken.png'}" in run(
        ["generate", "answer", str(tmp_path / "broken.png"), "what?"], capsys)


def test_sizes_are_checked_against_the_context_before_loading(checkpoints, tmp_path, capsys, monkeypatch):
    """CLI: --area 10^12 (and a video too long for the context) refused from the configs alone."""
    lm, vq = checkpoints
    loaded = []
    monkeypatch.setattr(Emu3ForCausalLM, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loaded.append(a)))
    out = tmp_path / "big.png"
    message = run(["generate", "image", "x", "--area", "1000000000000", "--model", lm, "--vq", vq,
                   "--out", str(out)], capsys)
    assert "exceeds the model's context of 1024 positions" in message and "--area" in message
    clip = frames_dir(tmp_path / "clip", size=256)  # the tiny VQ's largest: 32x32 tokens per latent frame
    message = run(["generate", "video-continue", str(clip), "--frames", "4", "--model", lm, "--vq", vq,
                   "--out", str(tmp_path / "long.gif")], capsys)
    assert "exceeds the model's context of 1024 positions" in message
    assert loaded == []
    assert files(tmp_path) == ["clip", *[f"clip/f{i}.png" for i in range(4)]]


def test_a_wrong_model_config_is_named(checkpoints, tmp_path, capsys):
    """CLI: --model whose config.json has a field of the wrong type."""
    lm = tmp_path / "lm"
    shutil.copytree(checkpoints[0], lm)
    config = (lm / "config.json").read_text().replace('"hidden_size": 64', '"hidden_size": "64"')
    (lm / "config.json").write_text(config)
    message = run(["generate", "image", "x", "--model", str(lm), "--vq", checkpoints[1],
                   "--out", str(tmp_path / "x.png")], capsys)
    assert f"{lm / 'config.json'}: hidden_size must be an integer, got '64'" in message
    assert not (tmp_path / "x.png").exists()


def test_overflowing_model_writes_no_image(checkpoints, overflowing_lm, tmp_path, capsys):
    """CLI: logits that overflow to inf stop the generation with an error; no image is written."""
    out = tmp_path / "x.png"
    message = run(["generate", "image", "x", "--area", "4096", "--seed", "0", "--model", overflowing_lm,
                   "--vq", checkpoints[1], "--out", str(out)], capsys)
    assert "logits are not finite (NaN or inf)" in message
    assert files(tmp_path) == []
