"""`emu3 vq encode|decode|reconstruct` in-process on the micro demo checkpoint, and tiny.py."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from emu3_vq import cli, tiny
from emu3_vq.cli import main
from emu3_vq.config import Emu3VQConfig
from emu3_vq.processor import Emu3ImageProcessor
from emu3_vq.weights import checkpoint_keys, read_safetensors

# micro preset: spatial factor 2; its processor keeps images within [32*32, 96*96] pixels


def _save_image(path, width, height, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny.build_tiny_checkpoint(tmp_path_factory.mktemp("micro"), "micro", seed=0)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    # a test that forgets --model builds the demo model here, not in the user's cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # a hub repo id resolves to nothing here,
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and is never looked up over the network
    # only this package's commands: other installed packages' entry points are not under test
    real = cli.entry_points
    monkeypatch.setattr(cli, "entry_points", lambda group: [e for e in real(group=group) if e.name == "vq"])


def _run(capsys, *argv):
    code = main(["vq", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


# ---- the demo checkpoint ------------------------------------------------------------------

def test_tiny_checkpoint_files(model_dir, tmp_path):
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json"]
    config = Emu3VQConfig.from_json_file(model_dir / "config.json")
    assert config == Emu3VQConfig.from_name("micro")
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == "Emu3VisionVQ"
    proc = Emu3ImageProcessor.from_pretrained(model_dir)
    assert proc.spatial_factor == config.spatial_factor == 2
    assert (proc.min_pixels, proc.max_pixels) == (32 * 32, 96 * 96)
    keys = checkpoint_keys(model_dir)
    assert keys == {k: ("I64" if k.endswith("num_batches_tracked") else "F32", s)
                    for k, s in tiny.original_key_shapes(config).items()}
    assert "encoder.time_res_stack.0.norm1.running_var" in keys
    assert keys["quantize.embedding.weight"] == ("F32", (32, 4))

    def digest(d):
        return hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()

    again = tiny.build_tiny_checkpoint(tmp_path / "again", "micro", seed=0)
    other = tiny.build_tiny_checkpoint(tmp_path / "other", "micro", seed=1)
    assert digest(again) == digest(model_dir) != digest(other)


@pytest.mark.parity
@pytest.mark.parametrize("preset", ["micro", "tiny", "emu3-visiontokenizer"])
def test_original_key_table_matches_transformers(preset):
    """Our original-layout names, renamed as convert_emu3_weights_to_hf.py does, are exactly
    the keys and shapes of transformers' Emu3VQVAE."""
    torch = pytest.importorskip("torch")
    from transformers import Emu3VQVAEConfig
    from transformers.models.emu3.modeling_emu3 import Emu3VQVAE

    config = Emu3VQConfig.from_name(preset)
    hf_config = Emu3VQVAEConfig(**config.to_dict("hf"), hidden_size=config.ch * config.ch_mult[-1],
                                num_attention_heads=1)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Emu3VQVAE(hf_config).state_dict().items()}
    renamed = {}
    for name, shape in tiny.original_key_shapes(config).items():
        for old, new in ((".q.", ".q_proj."), (".k.", ".k_proj."), (".v.", ".v_proj."),
                         (".proj_out.", ".out_proj.")):
            if old in name:
                name, shape = name.replace(old, new), shape[:2]  # 1x1 conv -> linear
        name = name.replace("mid.attn_1.norm.", "mid.attn_norm.")
        name = re.sub(r"attn\.(\d+)\.norm\.", r"attn_norms.\1.", name)
        name = name.replace(".down.", ".down_block.down.").replace(".up.", ".up_block.up.")
        renamed[name.replace(".mid.", ".middle_block.")] = shape
    assert renamed == expected


def test_default_model_dir_builds_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    first = tiny.default_model_dir()
    assert first == tmp_path / "xdg" / "emu3" / "tiny-vq-micro-seed0"
    assert "untrained" in capsys.readouterr().err
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny.default_model_dir(quiet=True) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert capsys.readouterr().err == ""
    (first / "model.safetensors").write_bytes(b"")  # a damaged cache is not detected by content,
    (first / tiny._STAMP).unlink()  # but a missing stamp forces a rebuild
    tiny.default_model_dir(quiet=True)
    assert set(read_safetensors(first / "model.safetensors")) == set(checkpoint_keys(first))


# ---- the commands -----------------------------------------------------------------------------

def test_encode_decode_reconstruct_image(model_dir, tmp_path, capsys):
    img = _save_image(tmp_path / "photo.png", 40, 32)  # within the limits: stays 40x32
    out = tmp_path / "out"
    code, stdout, _ = _run(capsys, "encode", img, "--model", model_dir, "-o", out)
    assert code == 0, stdout
    codes = np.load(out / "photo.npy")
    assert codes.shape == (16, 20) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 32
    assert str(out / "photo.npy") in stdout

    code, _, _ = _run(capsys, "decode", out / "photo.npy", "--model", model_dir, "-o", out)
    assert code == 0
    with Image.open(out / "photo.png") as im:
        assert im.size == (40, 32) and im.mode == "RGB"

    code, _, _ = _run(capsys, "reconstruct", img, "--model", model_dir, "-o", tmp_path / "rec",
                      "--save-codes")
    assert code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "rec" / "photo.npy"), codes)
    recon = np.asarray(Image.open(tmp_path / "rec" / "photo_recon.png"))
    np.testing.assert_array_equal(recon, np.asarray(Image.open(out / "photo.png")))


def test_batch_of_images_of_mixed_sizes(model_dir, tmp_path, capsys):
    paths = [_save_image(tmp_path / "a.png", 40, 32, 1), _save_image(tmp_path / "b.jpg", 40, 32, 2),
             _save_image(tmp_path / "c.png", 20, 30, 3),  # up-scaled to at least 32*32 pixels
             _save_image(tmp_path / "d.png", 200, 150, 4)]  # down-scaled to at most 96*96
    code, _, err = _run(capsys, "encode", *paths, "--model", model_dir, "-o", tmp_path / "out",
                        "--batch-size", 2)
    assert code == 0
    assert "encode:" in err  # the progress summary
    proc = Emu3ImageProcessor.from_pretrained(model_dir)
    for p, (w, h) in zip(paths, [(40, 32), (40, 32), (20, 30), (200, 150)]):
        th, tw = proc.smart_resize(h, w)
        assert np.load(tmp_path / "out" / f"{p.stem}.npy").shape == (th // 2, tw // 2)
    assert proc.smart_resize(30, 20) == (40, 28) and proc.smart_resize(150, 200) == (82, 110)
    # grouped by size, not padded: a batch gives each image the codes it gets alone
    code, _, _ = _run(capsys, "encode", paths[1], "--model", model_dir, "-o", tmp_path / "alone")
    np.testing.assert_array_equal(np.load(tmp_path / "alone" / "b.npy"), np.load(tmp_path / "out" / "b.npy"))


def test_video_folder_and_gif(model_dir, tmp_path, capsys):
    clip = tmp_path / "clip"
    clip.mkdir()
    for i in range(8):
        _save_image(clip / f"f{i}.png", 36, 32, seed=i)
    out = tmp_path / "out"
    code, _, _ = _run(capsys, "encode", clip, "--model", model_dir, "-o", out)
    assert code == 0
    assert np.load(out / "clip.npy").shape == (2, 16, 18)  # 8 frames / 4, 32x36 / 2

    # a 4-frame GIF: reconstruct writes the codes, a GIF and one PNG per frame
    frames = [Image.open(p) for p in sorted(clip.iterdir())[:4]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    code, _, _ = _run(capsys, "reconstruct", tmp_path / "anim.gif", "--model", model_dir, "-o", out,
                      "--save-codes")
    assert code == 0 and np.load(out / "anim.npy").shape == (1, 16, 18)
    written = sorted((out / "anim_recon_frames").iterdir())
    assert [p.name for p in written] == [f"frame_{i:04d}.png" for i in range(4)]
    assert Image.open(written[0]).size == (36, 32)
    with Image.open(out / "anim_recon.gif") as gif:
        assert gif.n_frames == 4 and gif.size == (36, 32)


def _error(capsys, *argv):
    code, out, err = _run(capsys, *argv)
    assert code == 2, (out, err)
    assert err.startswith("emu3: error: ") and "Traceback" not in err
    return err


def test_input_errors(model_dir, tmp_path, capsys):
    m = ("--model", model_dir, "-o", tmp_path / "out")
    assert "input not found" in _error(capsys, "encode", tmp_path / "nope.png", *m)

    clip = tmp_path / "clip6"
    clip.mkdir()
    for i in range(6):
        _save_image(clip / f"{i:02d}.png", 32, 32, seed=i)
    err = _error(capsys, "encode", clip, *m)
    assert "has 6 frames" in err and "multiple of 4" in err

    err = _error(capsys, "encode", _save_image(tmp_path / "small.png", 1, 40), *m)
    assert "small.png" in err and "too small" in err
    err = _error(capsys, "reconstruct", _save_image(tmp_path / "long.png", 120, 20), *m)
    assert "long.png" in err and "too elongated" in err
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert "cannot read image" in _error(capsys, "encode", tmp_path / "bad.png", *m)
    (tmp_path / "empty").mkdir()
    assert "no frame images" in _error(capsys, "encode", tmp_path / "empty", *m)
    (tmp_path / "notes.txt").write_text("x")
    assert "unsupported input" in _error(capsys, "encode", tmp_path / "notes.txt", *m)
    assert not (tmp_path / "out").exists()  # nothing written when an input is bad

    np.save(tmp_path / "codes.npy", np.full((4, 4), 99, np.int64))  # micro codebook: 32 codes
    assert "[0, 32)" in _error(capsys, "decode", tmp_path / "codes.npy", *m)
    np.save(tmp_path / "codes.npy", np.zeros((4,), np.int64))
    assert "[h, w]" in _error(capsys, "decode", tmp_path / "codes.npy", *m)
    np.save(tmp_path / "floats.npy", np.zeros((4, 4)))
    assert "integer" in _error(capsys, "decode", tmp_path / "floats.npy", *m)

    # photo.png -> photo.npy -> decode in the same folder would replace the photo
    img = _save_image(tmp_path / "same.png", 40, 32)
    before = img.read_bytes()
    np.save(tmp_path / "same.npy", np.zeros((16, 20), np.int64))
    err = _error(capsys, "decode", tmp_path / "same.npy", "--model", model_dir, "-o", tmp_path)
    assert "same.png already exists; pass --overwrite" in err and img.read_bytes() == before
    code, _, _ = _run(capsys, "decode", tmp_path / "same.npy", "--model", model_dir, "-o", tmp_path,
                      "--overwrite")
    assert code == 0 and img.read_bytes() != before


def test_model_errors(model_dir, tmp_path, capsys):
    img = _save_image(tmp_path / "photo.png", 40, 32)
    # not a local directory: from_pretrained resolves it (a path or a hub repo id) or says why not
    for missing in (tmp_path / "absent", "no-such-org/no-such-model"):
        err = _error(capsys, "encode", img, "--model", missing, "-o", tmp_path / "out")
        assert str(missing) in err and err.count("\n") == 1, err

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    err = _error(capsys, "encode", img, "--model", broken, "-o", tmp_path / "out")
    assert "model.safetensors" in err and "truncated" in err
    assert err.count("\n") == 1, err  # the one line: loaded before any progress bar starts
    err = _error(capsys, "decode", _save_codes(tmp_path / "c.npy"), "--model", broken, "-o", tmp_path / "out")
    assert "truncated" in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()

    err = _error(capsys, "encode", img, "--model", model_dir, "--revision", "v1", "-o", tmp_path / "out")
    assert "--revision is a hub revision" in err
    assert "--revision needs --model" in _error(capsys, "encode", img, "--revision", "v1")


def _save_codes(path, shape=(16, 20)):
    np.save(path, np.zeros(shape, np.int64))
    return path


def test_without_model_flag_and_no_default_model_the_tiny_one_is_used(tmp_path, capsys, monkeypatch):
    from emu3_vq import defaults

    monkeypatch.setattr(defaults, "installed", lambda: False)  # emu3-vq installed alone
    img = _save_image(tmp_path / "photo.png", 40, 32)
    code, _, err = _run(capsys, "encode", img, "-o", tmp_path / "out")
    assert code == 0 and "untrained" in err and "pip install emu3-shapes" in err
    assert np.load(tmp_path / "out" / "photo.npy").shape == (16, 20)


def test_without_model_flag_the_registered_default_model_is_used(model_dir, tmp_path, capsys, monkeypatch):
    from emu3_vq import defaults

    monkeypatch.setattr(defaults, "installed", lambda: True)
    monkeypatch.setattr(defaults, "model_dirs", lambda: {"lm": tmp_path, "vq": model_dir})
    monkeypatch.setattr(defaults, "describe", lambda: "the default model (a stand-in)")
    img = _save_image(tmp_path / "photo.png", 40, 32)
    code, _, err = _run(capsys, "encode", img, "-o", tmp_path / "out")
    assert code == 0 and "using the default model (a stand-in)" in err and "untrained" not in err
    # the registered (micro) checkpoint's codes, not the tiny fallback's
    assert main(["vq", "encode", str(img), "--model", str(model_dir), "-o", str(tmp_path / "direct")]) == 0
    assert np.array_equal(np.load(tmp_path / "out" / "photo.npy"), np.load(tmp_path / "direct" / "photo.npy"))


def test_defaults_without_a_registered_model(monkeypatch):
    from emu3_vq import defaults

    monkeypatch.setattr(defaults, "_registered", lambda: None)
    assert not defaults.installed()
    with pytest.raises(defaults.NoDefaultModel, match="pip install emu3-shapes"):
        defaults.model_dirs()
    with pytest.raises(defaults.NoDefaultModel):
        defaults.lm_dir()


@pytest.mark.slow
def test_jit_gives_the_same_results(model_dir, tmp_path, capsys):
    img = _save_image(tmp_path / "photo.png", 40, 32)
    for jit in ("on", "off"):
        code, _, _ = _run(capsys, "reconstruct", img, "--model", model_dir, "-o", tmp_path / jit,
                          "--save-codes", "--jit", jit)
        assert code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "on" / "photo.npy"),
                                  np.load(tmp_path / "off" / "photo.npy"))
    on = np.asarray(Image.open(tmp_path / "on" / "photo_recon.png")).astype(int)
    off = np.asarray(Image.open(tmp_path / "off" / "photo_recon.png")).astype(int)
    assert np.abs(on - off).max() <= 1  # float differences may cross a truncation boundary


@pytest.mark.parametrize("preset,flag,expected", [
    ("micro", "auto", False),  # a tiny model runs eagerly on CPU: compiling costs more than it saves
    ("micro", "on", True),
    ("emu3-visiontokenizer", "auto", True),  # real size: compiling wins even on the first call
    ("emu3-visiontokenizer", "off", False),
])
def test_jit_auto_compiles_real_size_models_on_cpu(tmp_path, monkeypatch, preset, flag, expected):
    from emu3_vq import commands
    from emu3_vq.model import Emu3VQModel

    directory = tmp_path / preset  # only config.json and preprocessor_config.json are read here
    directory.mkdir()
    config = Emu3VQConfig.from_name(preset)
    (directory / "config.json").write_text(json.dumps(config.to_dict()))
    Emu3ImageProcessor(spatial_factor=config.spatial_factor).save_pretrained(directory)
    seen = {}
    monkeypatch.setattr(Emu3VQModel, "from_pretrained",
                        classmethod(lambda cls, path, **kw: seen.update(kw) or "model"))
    assert commands._Tokenizer(str(directory), flag).load() == "model"
    assert seen["jit"] is expected


# ---- --model as a hub repo id, --revision, --dtype, --device, --threads -----------------------

def test_model_names_pass_to_from_pretrained_untouched(model_dir, tmp_path, monkeypatch, capsys):
    from emu3_vq import device
    from emu3_vq.model import Emu3VQModel

    calls = []
    real_model, real_processor = Emu3VQModel.from_pretrained, Emu3ImageProcessor.from_pretrained

    def model_from_pretrained(cls, name, **kw):
        calls.append(("model", name, kw))
        return real_model(model_dir, jit=kw["jit"])  # the hub repo, as the resolver would find it

    def processor_from_pretrained(cls, name, **kw):
        calls.append(("processor", name, kw))
        return real_processor(model_dir)

    monkeypatch.setattr(Emu3VQModel, "from_pretrained", classmethod(model_from_pretrained))
    monkeypatch.setattr(Emu3ImageProcessor, "from_pretrained", classmethod(processor_from_pretrained))
    monkeypatch.setattr(device, "select", lambda *a: calls.append(("select", *a)))
    img = _save_image(tmp_path / "photo.png", 40, 32)
    code, _, err = _run(capsys, "encode", img, "--model", "BAAI/Emu3-VisionTokenizer", "--revision", "v1",
                        "--dtype", "fp32", "--device", "cpu", "--threads", "1", "--jit", "off",
                        "-o", tmp_path / "out")
    assert code == 0, err
    assert np.load(tmp_path / "out" / "photo.npy").shape == (16, 20)
    assert calls == [("select", "cpu", None, 1),  # the device first, before any model is built
                     ("processor", "BAAI/Emu3-VisionTokenizer", {"revision": "v1"}),
                     ("model", "BAAI/Emu3-VisionTokenizer", {"revision": "v1", "jit": False, "dtype": "fp32"})]


def test_device_id_needs_device(model_dir, tmp_path, capsys):
    img = _save_image(tmp_path / "photo.png", 40, 32)
    err = _error(capsys, "encode", img, "--model", model_dir, "--device-id", "1", "-o", tmp_path / "out")
    assert "--device-id needs --device" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):  # argparse: not a device
        main(["vq", "encode", str(img), "--device", "tpu"])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


@pytest.mark.slow
def test_device_and_threads_in_a_fresh_process(tmp_path):
    """--device cpu and --threads 1 applied for real: MindSpore takes the device only before its
    runtime starts, so in a process of its own, which builds the demo model after selecting it."""
    img = _save_image(tmp_path / "photo.png", 40, 32)
    script = ("import sys, mindspore as ms; from emu3_vq.cli import main; "
              "code = main(sys.argv[1:]); print(ms.get_context('device_target')); sys.exit(code)")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script, "vq", "encode", str(img), "-o", str(tmp_path / "out"),
                           "--device", "cpu", "--threads", "1"],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "CPU"
    # the default model here: emu3-shapes when installed, else the tiny one; its processor sets the size
    from emu3_vq import defaults
    from emu3_vq.processor import smart_resize

    proc = Emu3ImageProcessor.from_pretrained(defaults.vq_dir())
    f = proc.spatial_factor
    h, w = smart_resize(32, 40, f, proc.min_pixels, proc.max_pixels, proc.max_aspect_ratio)
    assert np.load(tmp_path / "out" / "photo.npy").shape == (h // f, w // f)


def test_dtype_fp32_gives_the_default_codes(model_dir, tmp_path, capsys):
    """--dtype reaches from_pretrained as the string ("fp32"), the project's one spelling."""
    img = _save_image(tmp_path / "photo.png", 40, 32)
    for dtype in ((), ("--dtype", "fp32")):
        code, _, err = _run(capsys, "encode", img, "--model", model_dir, "-o", tmp_path / f"out{len(dtype)}",
                            *dtype)
        assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "out0" / "photo.npy"), np.load(tmp_path / "out2" / "photo.npy"))


# ---- MP4 in and out (the extra `video`) --------------------------------------------------------

def _clip_mp4(path, n=4, size=(36, 32)):
    from emu3_vq import media

    return media.save_video([Image.new("RGB", size, (30 * i, 120, 200 - 30 * i)) for i in range(n)], path)


def test_mp4_in_and_out(model_dir, tmp_path, capsys):
    pytest.importorskip("av", reason="MP4 needs PyAV, the optional extra `video` (pip install av)")
    from emu3_vq import media

    clip = _clip_mp4(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "reconstruct", clip, "--model", model_dir, "-o", out, "--save-codes",
                             "--video-format", "mp4", "--fps", "12")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["clip.npy", "clip_recon.mp4"]  # only what was asked
    assert str(out / "clip_recon.mp4") in stdout
    assert np.load(out / "clip.npy").shape == (1, 16, 18)
    assert media.video_info(out / "clip_recon.mp4") == (4, (36, 32))

    code, _, err = _run(capsys, "decode", out / "clip.npy", "--model", model_dir, "-o", tmp_path / "dec",
                        "--video-format", "gif,mp4,frames")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == ["clip.gif", "clip.mp4", "clip_frames"]
    frames = media.load_frames(tmp_path / "dec" / "clip_frames")
    mp4 = media.load_frames(tmp_path / "dec" / "clip.mp4")
    assert len(mp4) == len(frames) == 4
    # the MP4 holds the decoded frames, within its lossy coding (see test_media.MP4_MEAN_ABS_ERROR;
    # decoded frames are noisier than flat ones, hence a looser bound)
    assert max(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() for a, b in zip(mp4, frames)) < 12

    code, _, _ = _run(capsys, "encode", out / "clip_recon.mp4", "--model", model_dir, "-o", tmp_path / "again")
    assert code == 0 and np.load(tmp_path / "again" / "clip_recon.npy").shape == (1, 16, 18)


def test_video_format_option(model_dir, tmp_path, capsys):
    for bad, message in (("avi", "expected one or more of gif, mp4, frames"), ("gif,gif", "named twice")):
        with pytest.raises(SystemExit):
            main(["vq", "decode", "x.npy", "--video-format", bad])
        assert message in capsys.readouterr().err
    # frames only: no GIF
    _save_codes(tmp_path / "clip.npy", (1, 16, 18))
    code, _, err = _run(capsys, "decode", tmp_path / "clip.npy", "--model", model_dir, "-o", tmp_path / "out",
                        "--video-format", "frames")
    assert code == 0, err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["clip_frames"]


def test_mp4_without_pyav_is_refused_before_work(model_dir, tmp_path, monkeypatch, capsys):
    gif = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (36, 32), (60 * i, 0, 0)) for i in range(4)]  # distinct: GIF merges repeats
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 64)
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` fails as without the extra
    hint = "pip install 'emu3-vq[video]'"
    out = ("--model", model_dir, "-o", tmp_path / "out")
    assert hint in _error(capsys, "reconstruct", gif, *out, "--video-format", "mp4")
    assert hint in _error(capsys, "encode", tmp_path / "clip.mp4", *out)
    assert hint in _error(capsys, "decode", _save_codes(tmp_path / "v.npy", (1, 16, 18)), *out,
                          "--video-format", "gif,mp4")
    assert not (tmp_path / "out").exists()
    code, _, _ = _run(capsys, "reconstruct", gif, *out)  # GIF and frames need no PyAV
    assert code == 0 and (tmp_path / "out" / "anim_recon.gif").is_file()
