"""Nothing lost, nothing silent (issue 11), for the vision tokenizer: each test names its surface
(the API function or the `emu3 vq` command), asserts the message and that nothing is left behind."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from emu3_vq import cli, media, tiny, weights
from emu3_vq.cli import main
from emu3_vq.config import Emu3VQConfig
from emu3_vq.processor import Emu3ImageProcessor, to_rgb
from emu3_vq.weights import CheckpointError

# ---- helpers ----------------------------------------------------------------------------------


def _tensors(seed: int, sizes=(1000, 1000, 1000, 1000)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layer.{i}.weight": rng.standard_normal(n).astype(np.float32) for i, n in enumerate(sizes)}


def _listing(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _assert_loads(directory, tensors: dict[str, np.ndarray]) -> None:
    loaded = dict(weights.iter_checkpoint(directory))
    assert loaded.keys() == tensors.keys()
    for name, arr in tensors.items():
        np.testing.assert_array_equal(loaded[name], arr, err_msg=name)


def _leftovers(directory) -> list[str]:
    return [p.name for p in directory.rglob("*") if p.name.endswith((".tmp", ".old"))]


def _fail_after(monkeypatch, n: int, exc: BaseException) -> None:
    """weights._write_prepared (one file) raises `exc` once `n` files have been written."""
    real = weights._write_prepared
    count = {"files": 0}

    def write(path, items, metadata):
        if count["files"] == n:
            raise exc
        count["files"] += 1
        return real(path, items, metadata)

    monkeypatch.setattr(weights, "_write_prepared", write)


# ---- checkpoints committed as a whole (API: weights.write_checkpoint) ------------------------

@pytest.mark.parametrize("new_sizes", [
    (1000, 1000, 1000, 1000),  # as many shards: the standard names are taken
    (1000, 1000, 1000, 1000, 1000, 1000),  # more shards, other names
    (10,),  # one file over a sharded checkpoint
])
def test_write_checkpoint_failing_part_way_keeps_the_old_checkpoint(tmp_path, monkeypatch, new_sizes):
    old = _tensors(0)
    weights.write_checkpoint(tmp_path, old, max_shard_bytes=4000)
    (tmp_path / "config.json").write_text("{}")
    before = _listing(tmp_path)
    assert len([n for n in before if n.endswith(".safetensors")]) == 4

    _fail_after(monkeypatch, 2 if len(new_sizes) > 1 else 0, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError, match="No space left"):
        weights.write_checkpoint(tmp_path, _tensors(1, new_sizes), max_shard_bytes=4000)
    assert _listing(tmp_path) == before  # the new shards written so far are gone
    _assert_loads(tmp_path, old)  # exactly the old model


def test_write_checkpoint_interrupted_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    old = _tensors(0)
    weights.write_checkpoint(tmp_path, old, max_shard_bytes=4000)
    before = _listing(tmp_path)
    _fail_after(monkeypatch, 3, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        weights.write_checkpoint(tmp_path, _tensors(1), max_shard_bytes=4000)
    assert _listing(tmp_path) == before
    _assert_loads(tmp_path, old)


def test_write_checkpoint_disk_full_in_a_subprocess(tmp_path):
    """A real write error: a file-size limit (RLIMIT_FSIZE) stops the second shard part way."""
    old = _tensors(0)
    weights.write_checkpoint(tmp_path, old, max_shard_bytes=4000)
    before = _listing(tmp_path)
    script = textwrap.dedent(f"""
        import resource, sys
        import numpy as np
        from emu3_vq import weights
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))  # Python ignores SIGXFSZ
        rng = np.random.default_rng(1)
        new = {{f"layer.{{i}}.weight": rng.standard_normal(n).astype(np.float32)
               for i, n in enumerate((1000, 1000, 5000, 1000))}}
        try:
            weights.write_checkpoint({str(tmp_path)!r}, new, max_shard_bytes=4000)
        except OSError as exc:
            print(exc.errno, file=sys.stderr)
            sys.exit(3)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip() == str(errno.EFBIG)
    assert _listing(tmp_path) == before
    _assert_loads(tmp_path, old)


def test_reader_refuses_a_shard_of_another_save(tmp_path):
    """What the old writer left after a failed re-save (tensors of both models) is an error."""
    weights.write_checkpoint(tmp_path / "a", _tensors(0), max_shard_bytes=4000)
    weights.write_checkpoint(tmp_path / "b", _tensors(1), max_shard_bytes=4000)
    shard = "model-00002-of-00004.safetensors"
    (tmp_path / "a" / shard).write_bytes((tmp_path / "b" / shard).read_bytes())
    for read in (weights.checkpoint_keys, lambda d: list(weights.iter_checkpoint(d))):
        with pytest.raises(CheckpointError, match=f"{shard}: not a shard of the checkpoint its index"):
            read(tmp_path / "a")


def test_resave_leaves_no_stale_files_and_keeps_other_files(tmp_path):
    weights.write_checkpoint(tmp_path, _tensors(0), max_shard_bytes=4000)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")
    # what a killed save leaves: a complete shard no index names, and a temporary file
    (tmp_path / "model-00001-of-00009.safetensors").write_bytes(b"x")
    (tmp_path / ".model-00002-of-00009.safetensors.123.0a1b2c3d.tmp").write_bytes(b"x")

    second = _tensors(1)
    files = weights.write_checkpoint(tmp_path, second, max_shard_bytes=4000)
    shards = [p.name for p in files if p.name.endswith(".safetensors")]
    assert len(shards) == 4 and all(len(n.split("-")) == 5 for n in shards)  # the save's id in the name
    others = ["config.json", "tokenizer.json", "model.safetensors.index.json"]
    assert _listing(tmp_path) == sorted([*others, *shards])
    _assert_loads(tmp_path, second)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert all(weights.read_metadata(tmp_path / n)["checkpoint_id"] == index["metadata"]["checkpoint_id"]
               for n in shards)

    third = _tensors(2)
    weights.write_checkpoint(tmp_path, third, max_shard_bytes=4000)  # standard names are free again
    standard = [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    assert _listing(tmp_path) == sorted([*others, *standard])
    _assert_loads(tmp_path, third)


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "4000"])
def test_write_checkpoint_refuses_a_bad_max_shard_bytes(tmp_path, limit):
    with pytest.raises(ValueError, match="max_shard_bytes must be a positive number of bytes"):
        weights.write_checkpoint(tmp_path / "out", _tensors(0), max_shard_bytes=limit)
    assert not (tmp_path / "out").exists()


# ---- the VQ model's save_pretrained and from_pretrained (API) --------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny.build_tiny_checkpoint(tmp_path_factory.mktemp("micro"), "micro", seed=0)


def test_save_pretrained_failing_part_way_keeps_the_old_model(model_dir, tmp_path, monkeypatch):
    from emu3_vq.model import Emu3VQModel

    old = Emu3VQModel.from_pretrained(model_dir, jit=False)
    other_dir = tiny.build_tiny_checkpoint(tmp_path / "seed1", "micro", seed=1)
    new = Emu3VQModel.from_pretrained(other_dir, jit=False)
    target = tmp_path / "saved"
    old.save_pretrained(target, max_shard_bytes=20_000)
    before = _listing(target)
    assert len(before) > 4

    _fail_after(monkeypatch, 3, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError):
        new.save_pretrained(target, max_shard_bytes=20_000)
    assert _listing(target) == before
    got = weights.state_dict_numpy(Emu3VQModel.from_pretrained(target, jit=False))
    expected = weights.state_dict_numpy(old)
    assert all(np.array_equal(got[k], expected[k]) for k in expected)


def test_save_pretrained_refuses_a_bad_dtype_before_creating_anything(model_dir, tmp_path):
    from emu3_vq.model import Emu3VQModel

    model = Emu3VQModel.from_pretrained(model_dir, jit=False)
    with pytest.raises(ValueError, match="unknown dtype 'int8': use one of fp32, fp16, bf16"):
        model.save_pretrained(tmp_path / "out", dtype="int8")
    with pytest.raises(ValueError, match="max_shard_bytes"):
        model.save_pretrained(tmp_path / "out", max_shard_bytes=0)
    assert not (tmp_path / "out").exists()


def _with_nan(model_dir, tmp_path, name="decoder.conv_out.weight", bf16=False):
    directory = tmp_path / "nan-model"
    directory.mkdir()
    for f in ("config.json", "preprocessor_config.json"):
        (directory / f).write_bytes((model_dir / f).read_bytes())
    state = weights.read_safetensors(model_dir / "model.safetensors")
    state[name] = state[name].copy()
    state[name].flat[3] = np.nan
    weights.write_checkpoint(directory, state, dtype="BF16" if bf16 else None)
    return directory


def test_from_pretrained_refuses_nan_weights(model_dir, tmp_path):
    from emu3_vq.model import Emu3VQModel

    directory = _with_nan(model_dir, tmp_path)
    with pytest.raises(CheckpointError, match=f"{directory}: decoder.conv_out.weight holds NaN or inf"):
        Emu3VQModel.from_pretrained(directory, jit=False)


def test_load_into_checks_bf16_bits_and_can_be_told_not_to(model_dir, tmp_path):
    import mindspore as ms
    from mindspore import nn

    state = {"weight": np.array([[1.0, np.inf]], np.float32), "bias": np.zeros(1, np.float32)}
    weights.write_checkpoint(tmp_path, state, dtype="BF16")
    cell = nn.Dense(2, 1)
    with pytest.raises(CheckpointError, match="weight holds NaN or inf"):
        weights.load_into(cell, weights.iter_checkpoint(tmp_path, bf16="bits"), what=str(tmp_path))
    weights.load_into(cell, weights.iter_checkpoint(tmp_path, bf16="bits"), check_finite=False)
    assert np.isinf(cell.weight.astype(ms.float32).asnumpy()).any()


# ---- Emu3VQConfig: one place for every rule (API and `emu3 vq --model`) -----------------------

@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real = cli.entry_points
    monkeypatch.setattr(cli, "entry_points", lambda group: [e for e in real(group=group) if e.name == "vq"])


BAD_CONFIGS = [
    ({"ch": "32"}, '"ch" must be a positive integer, got \'32\''),
    ({"ch_mult": 2}, '"ch_mult" must be a list of integers, got 2'),
    ({"z_channels": 4.5}, '"z_channels" must be a positive integer, got 4.5'),
    ({"codebook_size": -5}, '"codebook_size" must be a positive integer, got -5'),
    ({"num_res_blocks": None}, '"num_res_blocks" must be a positive integer, got None'),
    ({"ch": 48}, '"ch" must be a multiple of 32'),
    ({"attn_resolutions": [4]}, '"attn_resolutions" must be stage indices below len(ch_mult) = 2'),
    ({"temporal_downsample_factor": 3}, '"temporal_downsample_factor" must be a power of two'),
    ({"dropout": 1.5}, '"dropout" must be a number in [0, 1)'),
    ({"double_z": "false"}, '"double_z" must be true or false'),
    ({"vq_config": [1]}, '"vq_config" must be a JSON object, got a list'),
]


@pytest.mark.parametrize("change,message", BAD_CONFIGS)
def test_config_errors_name_the_file_and_the_field(tmp_path, capsys, model_dir, change, message):
    directory = tmp_path / "model"
    directory.mkdir()
    processor_file = "preprocessor_config.json"
    (directory / processor_file).write_bytes((model_dir / processor_file).read_bytes())
    config = {**Emu3VQConfig.from_name("micro").to_dict(), **change}
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as info:  # API
        Emu3VQConfig.from_json_file(directory / "config.json")
    assert str(info.value).startswith(f"{directory / 'config.json'}: ") and message in str(info.value)

    image = tmp_path / "photo.png"  # CLI
    Image.new("RGB", (40, 32)).save(image)
    err = _error(capsys, "encode", image, "--model", directory, "-o", tmp_path / "out")
    assert str(directory / "config.json") in err and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text,message", [
    ("[1, 2]", "expected a JSON object, got a list"),
    ("{oops", "not valid JSON"),
])
def test_config_file_that_is_not_an_object(tmp_path, capsys, model_dir, text, message):
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        Emu3VQConfig.from_json_file(directory / "config.json")
    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 32)).save(image)
    err = _error(capsys, "encode", image, "--model", directory)
    assert f"{directory / 'config.json'}: {message}" in err


def test_processor_config_rules(tmp_path):
    for change, message in [({"min_pixels": "1"}, '"min_pixels" must be an integer'),
                            ({"max_pixels": 10**12}, '"max_pixels" must be at most'),
                            ({"do_resize": 1}, '"do_resize" must be true or false'),
                            ({"rescale_factor": float("nan")}, '"rescale_factor" must be a finite number'),
                            ({"image_std": [0.5, 0, 0.5]}, '"image_std" must not contain 0')]:
        (tmp_path / "preprocessor_config.json").write_text(json.dumps(change))
        with pytest.raises(ValueError, match=message) as info:
            Emu3ImageProcessor.from_pretrained(tmp_path)
        assert "preprocessor_config.json" in str(info.value)


# ---- images of every Pillow mode (API: processor.to_rgb, media.load_image; CLI: encode) -------

def test_16_bit_images_are_scaled_by_their_full_range(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 48).round().astype(np.uint16).reshape(48, 64)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode == "I;16"
    rgb = np.asarray(media.load_image(tmp_path / "deep.png"))
    expected = np.rint(ramp * (255 / 65535)).astype(np.uint8)
    assert rgb.shape == (48, 64, 3)
    np.testing.assert_array_equal(rgb[..., 0], expected)
    assert rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb)) == 256  # not clipped to white


@pytest.mark.parametrize("dtype", [np.int32, np.float32])
def test_32_bit_and_float_images_are_scaled_from_their_min_to_their_max(tmp_path, dtype):
    values = np.linspace(-3, 5, 40 * 30).astype(dtype).reshape(30, 40) * (1000 if dtype == np.int32 else 1)
    Image.fromarray(values).save(tmp_path / "wide.tif")
    with Image.open(tmp_path / "wide.tif") as im:
        assert im.mode == ("I" if dtype == np.int32 else "F")
    grey = np.asarray(media.load_image(tmp_path / "wide.tif"))[..., 0]
    v = values.astype(np.float64)
    np.testing.assert_array_equal(grey, np.rint((v - v.min()) * (255 / (v.max() - v.min()))).astype(np.uint8))


def test_images_that_cannot_be_converted_are_refused_naming_the_mode(tmp_path):
    nan = np.zeros((30, 40), np.float32)
    nan[3, 4] = np.nan
    Image.fromarray(nan).save(tmp_path / "nan.tif")
    with pytest.raises(ValueError, match=r"nan.tif: image of mode 'F' holds NaN or inf values"):
        media.load_image(tmp_path / "nan.tif")
    with pytest.raises(ValueError, match="images of mode 'La' are not supported"):
        to_rgb(Image.new("La", (8, 8)))


def test_folder_given_as_an_image(tmp_path):
    (tmp_path / "photo.png").mkdir()
    for read in (media.image_size, media.load_image, media.check_image):
        with pytest.raises(ValueError, match="expected an image file, got a directory"):
            read(tmp_path / "photo.png")


# ---- `emu3 vq`: every check before any work -------------------------------------------------

def _run(capsys, *argv):
    code = main(["vq", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _error(capsys, *argv, code=2):
    got, out, err = _run(capsys, *argv)
    assert got == code, (out, err)
    # a progress bar may stand before it (tqdm, stderr); the error itself is the one last line
    last = err.replace("\r", "\n").rstrip("\n").split("\n")[-1]
    assert last.startswith("emu3: error: ") and "Traceback" not in err, err
    return last


def _image(path, width=40, height=32, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_a_bad_later_input_stops_the_call_before_any_output(model_dir, tmp_path, capsys, monkeypatch):
    from emu3_vq.model import Emu3VQModel

    monkeypatch.setattr(Emu3VQModel, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("loaded")))
    ok = _image(tmp_path / "ok.png")
    data = _image(tmp_path / "cut.png", seed=1).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])  # header fine, pixels missing
    nan = np.zeros((32, 40), np.float32)
    nan[0, 0] = np.inf
    Image.fromarray(nan).save(tmp_path / "inf.tif")
    clip = tmp_path / "clip"
    clip.mkdir()
    for i in range(4):
        _image(clip / f"f{i}.png", 40 if i != 2 else 48, 32, seed=i)
    out = tmp_path / "out"
    for bad, message in [("cut.png", "cannot read image"), ("inf.tif", "mode 'F' holds NaN or inf"),
                         ("clip", "frame 2 is 48x32 pixels but frame 0 is 40x32")]:
        for command in ("encode", "reconstruct"):
            err = _error(capsys, command, ok, tmp_path / bad, "--model", model_dir, "-o", out)
            assert message in err and bad in err
            assert not out.exists()  # ok.npy is not written first


@pytest.mark.parametrize("option,value,message", [
    ("--fps", "0", "argument --fps: fps must be a number from 0.01 to 100"),
    ("--fps", "nan", "argument --fps: fps must be a number from 0.01 to 100"),
    ("--fps", "1000", "argument --fps: fps must be a number from 0.01 to 100"),
    ("--batch-size", "0", "argument --batch-size: must be an integer >= 1, got 0"),
])
def test_options_are_checked_before_any_work(model_dir, tmp_path, capsys, option, value, message):
    img = _image(tmp_path / "photo.png")
    with pytest.raises(SystemExit) as info:
        main(["vq", "reconstruct", str(img), "--model", str(model_dir), "-o", str(tmp_path / "out"),
              option, value])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_outputs_are_checked_before_any_work(model_dir, tmp_path, capsys):
    img = _image(tmp_path / "ok.png")
    err = _error(capsys, "encode", img, "--model", model_dir, "-o", img)  # -o names a regular file
    assert f"cannot write {img / 'ok.npy'}: {img} is not a directory (--output-dir)" in err
    clip = tmp_path / "clip"
    clip.mkdir()
    for i in range(4):
        _image(clip / f"f{i}.png", seed=i)
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip_recon_frames").write_text("not a folder")
    err = _error(capsys, "reconstruct", clip, "--model", model_dir, "-o", out, "--overwrite")
    assert "cannot write the folder" in err and "a file of that name is in the way" in err
    assert _listing(out) == ["clip_recon_frames"]


def test_huge_codes_are_refused_before_the_decoder_allocates(model_dir, tmp_path, capsys, monkeypatch):
    from emu3_vq.model import Emu3VQModel

    monkeypatch.setattr(Emu3VQModel, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("loaded")))
    np.save(tmp_path / "big.npy", np.zeros((200, 300), np.int16))
    err = _error(capsys, "decode", tmp_path / "big.npy", "--model", model_dir, "-o", tmp_path / "out")
    assert "big.npy: codes of 200x300 decode to 600x400 pixels, more than the 9216 (max_pixels)" in err
    assert not (tmp_path / "out").exists()


def test_nan_weights_stop_the_command_before_any_output(model_dir, tmp_path, capsys):
    directory = _with_nan(model_dir, tmp_path, bf16=True)
    img = _image(tmp_path / "photo.png")
    err = _error(capsys, "encode", img, "--model", directory, "-o", tmp_path / "out")
    assert "decoder.conv_out.weight holds NaN or inf values" in err
    assert not (tmp_path / "out").exists()


def test_a_write_error_is_one_line_and_leaves_nothing(model_dir, tmp_path, capsys, monkeypatch):
    img = _image(tmp_path / "photo.png")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    err = _error(capsys, "encode", img, "--model", model_dir, "-o", tmp_path / "out", code=1)
    assert "No space left on device" in err
    assert _listing(tmp_path / "out") == []


# ---- Ctrl-C and SIGTERM (CLI: emu3_vq.cli.main) ----------------------------------------------

@pytest.mark.parametrize("how,code,line", [
    ("ctrl-c", 130, "emu3: interrupted; nothing partial written\n"),
    ("sigterm", 143, "emu3: terminated (SIGTERM, or Ctrl-C while MindSpore ran); nothing partial written\n"),
])
def test_interrupt_prints_one_line_and_leaves_nothing_partial(model_dir, tmp_path, capsys, monkeypatch,
                                                              how, code, line):
    a, b = _image(tmp_path / "a.png", seed=1), _image(tmp_path / "b.png", 48, 32, seed=2)
    real = Image.Image.save
    saved = []

    def save(self, fp, *args, **kwargs):
        if len(saved) == 1:  # while writing the second PNG
            if how == "ctrl-c":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
        saved.append(fp)
        return real(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    before = signal.getsignal(signal.SIGTERM)
    got, out, err = _run(capsys, "reconstruct", a, b, "--model", model_dir, "-o", tmp_path / "out")
    assert got == code and err.endswith(line) and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) == before  # main restores the handler
    written = _listing(tmp_path / "out")
    assert written == ["a_recon.png"] and out.split() == [str(tmp_path / "out" / "a_recon.png")]
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_real_signal_to_the_emu3_command(model_dir, tmp_path, sig):
    """The console script in its own process, signalled once its first output is written (so
    MindSpore has run the model and holds SIGINT): one line, complete outputs only, no temp file."""
    inputs = [str(_image(tmp_path / f"in{i}.png", 40 + 2 * i, 32, seed=i)) for i in range(40)]
    emu3 = os.path.join(os.path.dirname(sys.executable), "emu3")
    proc = subprocess.Popen([emu3, "vq", "reconstruct", *inputs, "--model", str(model_dir), "-o",
                             str(tmp_path / "out"), "--batch-size", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    first = proc.stdout.readline()  # blocks until one output is complete
    proc.send_signal(sig)
    rest, err = proc.communicate(timeout=120)
    assert first and proc.returncode in (130, 143), err
    assert err.splitlines()[-1].startswith(("emu3: interrupted; ", "emu3: terminated (")), err
    assert "Traceback" not in err
    written = sorted((tmp_path / "out").iterdir())
    assert {str(p) for p in written} >= {first.strip(), *rest.split()}  # every path printed is there
    for path in written:
        with Image.open(path) as im:
            im.load()  # and complete, as is every file written
    assert _leftovers(tmp_path) == []


def test_frames_folder_is_replaced_whole(tmp_path, monkeypatch):
    """API: media.save_frames commits a folder of frames as a whole."""
    frames = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(6)]
    folder = tmp_path / "clip_frames"
    media.save_frames(frames, folder)
    media.save_frames(frames[:4], folder)  # a shorter video: no frame of the earlier one stays
    assert _listing(folder) == [f"frame_{i:04d}.png" for i in range(4)]

    real = media.save_png

    def interrupted(image, path):
        if path.name == "frame_0002.png":
            raise KeyboardInterrupt
        return real(image, path)

    monkeypatch.setattr(media, "save_png", interrupted)
    with pytest.raises(KeyboardInterrupt):
        media.save_frames([Image.new("RGB", (8, 8), (9, 9, 9))] * 5, folder)
    assert _listing(folder) == [f"frame_{i:04d}.png" for i in range(4)]  # the old folder, untouched
    assert np.asarray(Image.open(folder / "frame_0001.png"))[0, 0, 0] == 1
    assert _leftovers(tmp_path) == [] and _listing(tmp_path) == ["clip_frames"]
