"""Loading by hub repo id (emu3_vq.hub): from a local Hugging Face cache offline, only the files
each class needs, one-line errors that say how to download; the one dtype spelling."""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from emu3_vq import hub, tiny, weights
from emu3_vq.config import Emu3VQConfig
from emu3_vq.model import Emu3VQModel
from emu3_vq.processor import Emu3ImageProcessor


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    return tiny.build_tiny_checkpoint(tmp_path_factory.mktemp("micro"), "micro", seed=0)


def _params(model) -> dict:
    return {n: p.asnumpy() for n, p in model.parameters_and_names()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _http_error(cls, status=404):
    response = types.SimpleNamespace(status_code=status, headers={}, request=None)
    return cls(f"{status} Client Error\nmore lines", response=response)


# ---- from the local cache, offline -----------------------------------------------------------

def test_every_class_loads_by_repo_id_offline(local, hub_cache):
    cache, publish = hub_cache
    publish("org/tiny-vq", local)
    by_id = Emu3VQModel.from_pretrained("org/tiny-vq", cache_dir=cache, jit=False)
    assert _same(_params(by_id), _params(Emu3VQModel.from_pretrained(local, jit=False)))
    assert Emu3ImageProcessor.from_pretrained("org/tiny-vq", cache_dir=cache).to_dict() == \
        Emu3ImageProcessor.from_pretrained(local).to_dict()
    assert Emu3VQConfig.from_pretrained("org/tiny-vq", cache_dir=cache) == Emu3VQConfig.from_json_file(
        local / "config.json")
    assert Emu3VQConfig.from_pretrained(local) == Emu3VQConfig.from_pretrained(str(local))


def test_revision_picks_its_snapshot(local, hub_cache, tmp_path):
    cache, publish = hub_cache
    other = tiny.build_tiny_checkpoint(tmp_path / "seed1", "micro", seed=1)
    publish("org/tiny-vq", local)
    publish("org/tiny-vq", other, revision="v2")
    main = _params(Emu3VQModel.from_pretrained("org/tiny-vq", cache_dir=cache, jit=False))
    v2 = _params(Emu3VQModel.from_pretrained("org/tiny-vq", revision="v2", cache_dir=cache, jit=False))
    assert _same(v2, _params(Emu3VQModel.from_pretrained(other, jit=False)))
    assert not _same(main, v2)
    with pytest.raises(FileNotFoundError, match="'org/tiny-vq' at revision 'v3' is not in the local"):
        Emu3VQConfig.from_pretrained("org/tiny-vq", revision="v3", cache_dir=cache)


def test_absent_repo_offline_is_one_line_saying_how_to_download(hub_cache):
    cache, _ = hub_cache
    with pytest.raises(FileNotFoundError) as info:
        Emu3VQModel.from_pretrained("org/absent", cache_dir=cache)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("'org/absent' is not in the local Hugging Face cache and downloads are off "
                              "(HF_HUB_OFFLINE=1): download it with `hf download org/absent")
    assert "--include 'config.json'" in message and message.endswith("or pass a local directory")
    with pytest.raises(FileNotFoundError, match=r"downloads are off \(local_files_only=True\)"):
        Emu3VQConfig.from_pretrained("org/absent", cache_dir=cache, local_files_only=True)


def test_a_file_missing_from_the_cached_snapshot_is_named(local, hub_cache, tmp_path):
    cache, publish = hub_cache
    partial = tmp_path / "partial"
    shutil.copytree(local, partial)
    (partial / "preprocessor_config.json").unlink()
    (partial / "model.safetensors").unlink()
    publish("org/partial", partial)
    with pytest.raises(FileNotFoundError) as info:
        Emu3ImageProcessor.from_pretrained("org/partial", cache_dir=cache)
    message = str(info.value)
    assert "\n" not in message and message.startswith(
        "'org/partial' in the local Hugging Face cache has no preprocessor_config.json and downloads are off "
        "(HF_HUB_OFFLINE=1): download it with `hf download org/partial --cache-dir")
    with pytest.raises(FileNotFoundError, match=r"has no \*\.safetensors: download it with `hf download"):
        Emu3VQModel.from_pretrained("org/partial", cache_dir=cache)
    assert Emu3VQConfig.from_pretrained("org/partial", cache_dir=cache)  # config.json is all it needs


def test_not_a_directory_nor_a_repo_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found.*nor is it a hub repo id"):
        Emu3VQModel.from_pretrained(str(tmp_path / "nowhere" / "deep" / "x"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="is a file; pass the directory"):
        Emu3VQModel.from_pretrained(tmp_path / "file")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Emu3VQConfig.from_pretrained(tmp_path)


def test_bad_arguments_are_value_errors(local):
    with pytest.raises(ValueError, match="expected a checkpoint directory or a hub repo id"):
        hub.resolve(None, ["config.json"])
    with pytest.raises(ValueError, match="allow_patterns must be a non-empty list"):
        hub.resolve("org/name", "config.json")  # a string would be read as one pattern per character
    with pytest.raises(ValueError, match="revision must be"):
        hub.resolve("org/name", ["config.json"], revision=2)


def test_is_repo_id(tmp_path, monkeypatch):
    assert hub.is_repo_id("BAAI/Emu3-Gen")
    assert not hub.is_repo_id("a/b/c") and not hub.is_repo_id(str(tmp_path)) and not hub.is_repo_id(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not hub.is_repo_id("org/name")  # a local directory of that name wins
    assert hub.resolve("org/name", ["config.json"], required=()) == Path("org/name")


# ---- online, against a stand-in hub ----------------------------------------------------------

def _combined_hf(local: Path, root: Path) -> Path:
    """An Emu3 -hf-like checkpoint: the VQ's tensors as vqmodel.* in one shard, LM tensors in
    another, an index naming both."""
    root.mkdir()
    vq = dict(weights.iter_checkpoint(local))
    weights.write_checkpoint(root / "vq", {f"vqmodel.{k}": v for k, v in vq.items()})
    weights.write_checkpoint(root / "lm", {"text_model.lm_head.weight": np.ones((4, 4), np.float32)})
    (root / "vq" / "model.safetensors").rename(root / "model-00001-of-00002.safetensors")
    (root / "lm" / "model.safetensors").rename(root / "model-00002-of-00002.safetensors")
    shutil.rmtree(root / "vq"), shutil.rmtree(root / "lm")
    weight_map = {f"vqmodel.{k}": "model-00001-of-00002.safetensors" for k in vq}
    weight_map["text_model.lm_head.weight"] = "model-00002-of-00002.safetensors"
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    vq_config = json.loads((local / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({"vq_config": vq_config, "text_config": {}}))
    shutil.copyfile(local / "preprocessor_config.json", root / "preprocessor_config.json")
    (root / "tokenizer.json").write_text("{}")
    return root


@pytest.fixture
def online(monkeypatch):
    """Downloads on, whatever the environment says."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_only_the_files_a_class_needs_are_fetched(local, tmp_path, fake_hub, online):
    """The vision tokenizer of a combined checkpoint fetches config.json and its own shard, not the
    LM's; the image processor and the config one file each."""
    serve, calls = fake_hub
    serve("org/combined-hf", _combined_hf(local, tmp_path / "remote"))
    model = Emu3VQModel.from_pretrained("org/combined-hf", jit=False)
    fetched = {f for call in calls for f in call["fetched"]}
    assert fetched == {"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"}
    assert not any(call["local_files_only"] for call in calls)
    assert _same(_params(model), _params(Emu3VQModel.from_pretrained(local, jit=False)))

    calls.clear()
    Emu3ImageProcessor.from_pretrained("org/combined-hf", revision="v1")
    Emu3VQConfig.from_pretrained("org/combined-hf")
    assert [(c["allow_patterns"], c["fetched"], c["revision"]) for c in calls] == [
        (["preprocessor_config.json"], ["preprocessor_config.json"], "v1"),
        (["config.json"], ["config.json"], None)]


def test_a_checkpoint_without_an_index_fetches_its_safetensors(local, fake_hub, online):
    serve, calls = fake_hub
    serve("org/tiny-vq", local)
    Emu3VQModel.from_pretrained("org/tiny-vq", jit=False)
    assert sorted({f for call in calls for f in call["fetched"]}) == ["config.json", "model.safetensors"]


def test_hf_hub_offline_is_read_on_every_call(local, fake_hub, online, monkeypatch):
    serve, calls = fake_hub
    serve("org/tiny-vq", local)
    Emu3VQConfig.from_pretrained("org/tiny-vq")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # after huggingface_hub was imported
    Emu3VQConfig.from_pretrained("org/tiny-vq")
    assert [c["local_files_only"] for c in calls] == [False, True]


def test_hub_errors_are_one_line(local, fake_hub, online, monkeypatch):
    import huggingface_hub
    from huggingface_hub import errors

    with pytest.raises(FileNotFoundError) as info:  # fake_hub serves no such repository
        Emu3VQModel.from_pretrained("org/absent")
    assert str(info.value).startswith("no repository 'org/absent' on the hub") and "\n" not in str(info.value)

    def raising(error):
        def snapshot_download(*args, **kwargs):
            raise error
        return snapshot_download

    for error, message in [
            (_http_error(errors.GatedRepoError, 403), "'org/x' is a gated repository: accept its conditions"),
            (_http_error(errors.RevisionNotFoundError), "'org/x' has no revision 'nope' on the hub"),
            (_http_error(errors.HfHubHTTPError, 401), "'org/x': the hub refused access (401"),
            (_http_error(errors.HfHubHTTPError, 503), "'org/x': the hub answered 503 (503 Client Error)"),
            (errors.LocalEntryNotFoundError("Got: ConnectError\nAn error happened"),
             "'org/x' at revision 'nope' is not in the local Hugging Face cache and the hub could not be")]:
        monkeypatch.setattr(huggingface_hub, "snapshot_download", raising(error))
        with pytest.raises(FileNotFoundError) as info:
            Emu3VQConfig.from_pretrained("org/x", revision="nope")
        assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)


def test_a_file_the_repository_lacks(local, tmp_path, fake_hub, online):
    serve, _ = fake_hub
    remote = tmp_path / "remote"
    shutil.copytree(local, remote)
    (remote / "preprocessor_config.json").unlink()
    serve("org/no-processor", remote)
    with pytest.raises(FileNotFoundError, match="the hub repository 'org/no-processor' has no "
                                                "preprocessor_config.json: is it the right checkpoint"):
        Emu3ImageProcessor.from_pretrained("org/no-processor")
    serve("org/lm-only", remote)
    index = {"weight_map": {"model.embed_tokens.weight": "model.safetensors"}}
    (remote / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="safetensors.index.json names no weights of this model"):
        Emu3VQModel.from_pretrained("org/lm-only")


# ---- dtype -------------------------------------------------------------------------------------

def test_one_dtype_spelling(local, tmp_path):
    for dtype in ("bf16", ms.bfloat16):
        assert Emu3VQModel.from_pretrained(local, dtype=dtype, jit=False).compute_dtype == ms.bfloat16
    assert Emu3VQModel.from_pretrained(local, dtype="fp32", jit=False).compute_dtype is None
    for other in ("bfloat16", "BF16", "float32"):
        with pytest.raises(ValueError, match=f"unknown dtype '{other}': use one of fp32, fp16, bf16"):
            Emu3VQModel.from_pretrained(local, dtype=other, jit=False)
    model = Emu3VQModel.from_pretrained(local, jit=False)
    model.save_pretrained(tmp_path / "bf16", dtype=ms.bfloat16)
    assert weights.checkpoint_keys(tmp_path / "bf16")["quantize.embedding.weight"][0] == "BF16"
    with pytest.raises(ValueError, match="unknown dtype 'BF16'"):
        model.save_pretrained(tmp_path / "out", dtype="BF16")
    assert not (tmp_path / "out").exists()


# ---- the command line --------------------------------------------------------------------------

def test_cli_takes_a_repo_id(local, hub_cache, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants
    from emu3_vq import cli
    from PIL import Image

    cache, publish = hub_cache
    publish("org/tiny-vq", local)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub reads HF_HUB_CACHE once, when imported (already done here)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(image)
    code = cli.main(["vq", "encode", str(image), "--model", "org/tiny-vq", "-o", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    codes = np.load(next((tmp_path / "out").glob("*.npy")))
    model = Emu3VQModel.from_pretrained(local, jit=False)
    processor = Emu3ImageProcessor.from_pretrained(local)
    want = model.encode(processor.preprocess(Image.open(image))).asnumpy()
    assert np.array_equal(codes, want.reshape(codes.shape))
    code = cli.main(["vq", "encode", str(image), "--model", "org/absent", "-o", str(tmp_path / "out2")])
    err = capsys.readouterr().err
    assert code == 2 and "hf download org/absent" in err and "Traceback" not in err
