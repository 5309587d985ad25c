"""Loading by hub repo id (emu3_vq.hub): from a local Hugging Face cache, offline, only the files
each class needs; one-line errors that say how to download."""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

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


def test_every_class_loads_by_repo_id_offline(local, hub_cache):
    cache, publish = hub_cache
    publish("org/tiny-vq", local)
    by_id = Emu3VQModel.from_pretrained("org/tiny-vq", cache_dir=cache, jit=False)
    by_dir = Emu3VQModel.from_pretrained(local, jit=False)
    a, b = _params(by_id), _params(by_dir)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert Emu3ImageProcessor.from_pretrained("org/tiny-vq", cache_dir=cache).to_dict() == \
        Emu3ImageProcessor.from_pretrained(local).to_dict()
    assert Emu3VQConfig.from_pretrained("org/tiny-vq", cache_dir=cache) == Emu3VQConfig.from_json_file(
        local / "config.json")


def test_revision_picks_its_snapshot(local, hub_cache, tmp_path):
    cache, publish = hub_cache
    other = tiny.build_tiny_checkpoint(tmp_path / "seed1", "micro", seed=1)
    publish("org/tiny-vq", local)
    publish("org/tiny-vq", other, revision="v2")
    main = _params(Emu3VQModel.from_pretrained("org/tiny-vq", cache_dir=cache, jit=False))
    v2 = _params(Emu3VQModel.from_pretrained("org/tiny-vq", revision="v2", cache_dir=cache, jit=False))
    want = _params(Emu3VQModel.from_pretrained(other, jit=False))
    assert all(np.array_equal(v2[k], want[k]) for k in want)
    assert not all(np.array_equal(main[k], v2[k]) for k in want)


def test_absent_repo_offline_is_one_line_saying_how_to_download(hub_cache):
    cache, _ = hub_cache
    with pytest.raises(FileNotFoundError) as info:
        Emu3VQModel.from_pretrained("org/absent", cache_dir=cache)
    message = str(info.value)
    assert "\n" not in message and "hf download org/absent" in message and "local directory" in message


def test_a_file_missing_from_the_cached_snapshot_is_named(local, hub_cache, tmp_path):
    cache, publish = hub_cache
    partial = tmp_path / "partial"
    shutil.copytree(local, partial)
    (partial / "preprocessor_config.json").unlink()
    publish("org/partial", partial)
    with pytest.raises(FileNotFoundError, match="has no preprocessor_config.json: download it with"):
        Emu3ImageProcessor.from_pretrained("org/partial", cache_dir=cache)


def test_not_a_directory_nor_a_repo_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        Emu3VQModel.from_pretrained(str(tmp_path / "nowhere" / "deep" / "x"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="is a file"):
        Emu3VQModel.from_pretrained(tmp_path / "file")


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
    return root


def test_only_the_files_a_class_needs_are_fetched(local, tmp_path, monkeypatch):
    """A stand-in for the hub that copies what allow_patterns names from a 'remote' folder: the
    vision tokenizer of a combined checkpoint fetches its own shard, not the LM's."""
    import huggingface_hub

    remote = _combined_hf(local, tmp_path / "remote")
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    asked = []

    def fake_snapshot_download(repo_id, revision=None, cache_dir=None, local_files_only=False, allow_patterns=None):
        asked.append(list(allow_patterns))
        for file in remote.iterdir():
            if any(fnmatch.fnmatch(file.name, p) for p in allow_patterns):
                shutil.copyfile(file, snapshot / file.name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = Emu3VQModel.from_pretrained("org/combined-hf", jit=False)
    fetched = sorted(p.name for p in snapshot.iterdir())
    assert "model-00002-of-00002.safetensors" not in fetched
    assert "model-00001-of-00002.safetensors" in fetched
    want = _params(Emu3VQModel.from_pretrained(local, jit=False))
    got = _params(model)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    Emu3ImageProcessor.from_pretrained("org/combined-hf")
    assert asked[-1] == ["preprocessor_config.json"]


def test_is_repo_id(tmp_path):
    assert hub.is_repo_id("BAAI/Emu3-Gen") and not hub.is_repo_id("a/b/c") and not hub.is_repo_id(str(tmp_path))


def test_cli_takes_a_repo_id(local, hub_cache, tmp_path, monkeypatch, capsys):
    from emu3_vq import cli
    from PIL import Image

    cache, publish = hub_cache
    publish("org/tiny-vq", local)
    import huggingface_hub.constants

    # the default cache folder, which huggingface_hub reads from HF_HUB_CACHE when imported
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(image)
    code = cli.main(["vq", "encode", str(image), "--model", "org/tiny-vq", "-o", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    code = cli.main(["vq", "encode", str(image), "--model", "org/absent", "-o", str(tmp_path / "out2")])
    assert code == 2 and "hf download org/absent" in capsys.readouterr().err
