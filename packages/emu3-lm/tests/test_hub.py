"""The LM, its config, tokenizer and processor by hub repo id (emu3_vq.hub): from a local Hugging
Face cache offline, only the files each needs from a combined -hf repository; one dtype spelling."""

from __future__ import annotations

import json
import shutil
import sys

import mindspore as ms
import numpy as np
import pytest
from emu3_lm.config import Emu3LMConfig
from emu3_lm.model import Emu3ForCausalLM
from emu3_lm.processor import Emu3Processor
from emu3_lm.tiny_assets import build_tokenizer
from emu3_lm.tokenizer import Emu3Tokenizer
from emu3_vq import tiny, weights
from emu3_vq.model import Emu3VQModel

TEXT = "a red circle on a blue background"


def _lm(seed: int) -> Emu3ForCausalLM:
    ms.set_seed(seed)
    return Emu3ForCausalLM(Emu3LMConfig.from_name("tiny"), dtype=ms.float32)


@pytest.fixture(scope="module")
def model():
    return _lm(0)


def _params(model) -> dict:
    return {n: p.asnumpy() for n, p in model.parameters_and_names()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ---- from the local cache, offline -----------------------------------------------------------

@pytest.mark.parametrize("layout", ["original", "hf"])
def test_lm_and_config_load_by_repo_id_offline(model, tmp_path, hub_cache, layout):
    cache, publish = hub_cache
    model.save_pretrained(tmp_path / "lm", layout=layout, max_shard_bytes=60_000)
    publish("org/tiny-lm", tmp_path / "lm")
    by_id = Emu3ForCausalLM.from_pretrained("org/tiny-lm", dtype="fp32", cache_dir=cache)
    assert _same(_params(by_id), _params(Emu3ForCausalLM.from_pretrained(tmp_path / "lm", dtype="fp32")))
    assert _same(_params(by_id), _params(model))
    assert Emu3LMConfig.from_pretrained("org/tiny-lm", cache_dir=cache) == Emu3LMConfig.from_pretrained(
        tmp_path / "lm") == by_id.config


def test_revision_picks_its_snapshot(model, tmp_path, hub_cache):
    cache, publish = hub_cache
    model.save_pretrained(tmp_path / "main")
    _lm(1).save_pretrained(tmp_path / "v2")
    publish("org/tiny-lm", tmp_path / "main")
    publish("org/tiny-lm", tmp_path / "v2", revision="v2")
    v2 = _params(Emu3ForCausalLM.from_pretrained("org/tiny-lm", revision="v2", cache_dir=cache))
    assert _same(v2, _params(Emu3ForCausalLM.from_pretrained(tmp_path / "v2")))
    assert not _same(v2, _params(Emu3ForCausalLM.from_pretrained("org/tiny-lm", cache_dir=cache)))


def test_absent_repo_or_shard_is_one_line_saying_how_to_download(model, tmp_path, hub_cache):
    cache, publish = hub_cache
    with pytest.raises(FileNotFoundError) as info:
        Emu3ForCausalLM.from_pretrained("BAAI/Emu3-Gen", cache_dir=cache)
    message = str(info.value)
    assert "\n" not in message and message.startswith(
        "'BAAI/Emu3-Gen' is not in the local Hugging Face cache and downloads are off (HF_HUB_OFFLINE=1): "
        f"download it with `hf download BAAI/Emu3-Gen --cache-dir '{cache}' --include 'config.json'")

    model.save_pretrained(tmp_path / "lm", max_shard_bytes=60_000)
    shard = max(tmp_path.glob("lm/model-*.safetensors"))
    shard.unlink()  # a snapshot downloaded in part
    publish("org/partial", tmp_path / "lm")
    with pytest.raises(FileNotFoundError) as info:
        Emu3ForCausalLM.from_pretrained("org/partial", cache_dir=cache)
    message = str(info.value)
    assert "\n" not in message and message.startswith(
        f"'org/partial' in the local Hugging Face cache has no {shard.name} and downloads are off")
    assert f"'{shard.name}'`, or pass a local directory" in message


@pytest.mark.parametrize("fmt", ["tiktoken", "tokenizer.json", "sentencepiece"])
def test_tokenizer_and_processor_by_repo_id(tmp_path, hub_cache, fmt):
    cache, publish = hub_cache
    local = build_tokenizer(tmp_path / "tok", fmt, num_visual_tokens=64)
    by_dir = Emu3Tokenizer.from_pretrained(local)
    publish("org/tiny-tok", local)
    by_id = Emu3Tokenizer.from_pretrained("org/tiny-tok", cache_dir=cache)
    assert by_id.encode(TEXT) == by_dir.encode(TEXT) and by_id.format == fmt

    vq = tiny.build_tiny_checkpoint(tmp_path / "vq", "micro", seed=0)
    publish("org/tiny-vq", vq)
    processor = Emu3Processor.from_pretrained("org/tiny-tok", "org/tiny-vq", cache_dir=cache, jit=False)
    assert processor.tokenizer.encode(TEXT) == by_dir.encode(TEXT)
    assert _same(_params(processor.vq_model), _params(Emu3VQModel.from_pretrained(vq, jit=False)))


def test_a_repo_without_a_tokenizer(tmp_path, hub_cache):
    cache, publish = hub_cache
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "config.json").write_text("{}")
    publish("org/no-tok", tmp_path / "lm")
    message = (r"'org/no-tok' in the local Hugging Face cache has no emu3\.tiktoken, tokenizer\.json or "
               r"tokenizer\.model and downloads are off")
    with pytest.raises(FileNotFoundError, match=message):
        Emu3Tokenizer.from_pretrained("org/no-tok", cache_dir=cache)


def test_sentencepiece_is_an_optional_extra(tmp_path, monkeypatch):
    local = build_tokenizer(tmp_path / "tok", "sentencepiece", num_visual_tokens=8)
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # not installed
    with pytest.raises(ImportError) as info:
        Emu3Tokenizer.from_pretrained(local)
    assert str(info.value) == (f"the tokenizer at {local / 'tokenizer.model'} is a sentencepiece model: "
                               f"pip install 'emu3-lm[sentencepiece]'")


# ---- online, against a stand-in hub: a combined -hf repository -------------------------------

@pytest.fixture
def online(monkeypatch):
    """Downloads on, whatever the environment says."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def _combined_hf(model, root):
    """An Emu3-Gen-hf-like repository: LM shards (text_model.*), the VQ in a shard of its own
    (vqmodel.*), one index naming all, config.json with text_config and vq_config, tokenizer and
    image processor files. Returns (root, LM shards, VQ shard, the VQ's own directory)."""
    model.save_pretrained(root, layout="hf", max_shard_bytes=60_000)
    lm_shards = sorted(p.name for p in root.glob("model-*.safetensors"))
    vq_dir = tiny.build_tiny_checkpoint(root.parent / "vq", "micro", seed=0)
    weights.write_checkpoint(root.parent / "vq-prefixed",
                             {f"vqmodel.{k}": v for k, v in weights.iter_checkpoint(vq_dir)})
    vq_shard = "model-vqmodel.safetensors"
    shutil.move(root.parent / "vq-prefixed" / "model.safetensors", root / vq_shard)
    index = json.loads((root / "model.safetensors.index.json").read_text())
    index["weight_map"].update({k: vq_shard for k in weights.checkpoint_keys(root / vq_shard)})
    index["metadata"].pop("checkpoint_id", None)  # one index over two saves, as transformers writes it
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    config = json.loads((root / "config.json").read_text())
    config["vq_config"] = json.loads((vq_dir / "config.json").read_text())
    (root / "config.json").write_text(json.dumps(config))
    shutil.copyfile(vq_dir / "preprocessor_config.json", root / "preprocessor_config.json")
    build_tokenizer(root, "tokenizer.json", num_visual_tokens=64)
    return root, lm_shards, vq_shard, vq_dir


def test_lm_and_vq_fetch_only_their_own_shards(model, tmp_path, fake_hub, online):
    serve, calls = fake_hub
    root, lm_shards, vq_shard, vq_dir = _combined_hf(model, tmp_path / "remote")
    serve("org/emu3-hf", root)
    assert len(lm_shards) > 2

    lm = Emu3ForCausalLM.from_pretrained("org/emu3-hf", dtype="fp32")
    fetched = {f for call in calls for f in call["fetched"]}
    assert fetched == {"config.json", "model.safetensors.index.json", *lm_shards}
    assert _same(_params(lm), _params(model))

    calls.clear()
    vq = Emu3VQModel.from_pretrained("org/emu3-hf", jit=False)
    assert {f for call in calls for f in call["fetched"]} == {"config.json", "model.safetensors.index.json",
                                                             vq_shard}
    assert _same(_params(vq), _params(Emu3VQModel.from_pretrained(vq_dir, jit=False)))

    calls.clear()
    tokenizer = Emu3Tokenizer.from_pretrained("org/emu3-hf")
    tokenizer_files = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    fetched = {f for call in calls for f in call["fetched"]}
    assert fetched == tokenizer_files & {p.name for p in root.iterdir()}
    assert tokenizer.encode(TEXT) == Emu3Tokenizer.from_pretrained(root).encode(TEXT)

    calls.clear()
    Emu3LMConfig.from_pretrained("org/emu3-hf")
    assert [c["fetched"] for c in calls] == [["config.json"]]


def test_processor_passes_the_hub_options_on(model, tmp_path, fake_hub, online):
    serve, calls = fake_hub
    root, lm_shards, vq_shard, _ = _combined_hf(model, tmp_path / "remote")
    serve("org/emu3-hf", root)
    processor = Emu3Processor.from_pretrained("org/emu3-hf", "org/emu3-hf", revision="r1", jit=False)
    assert processor.vq_model is not None and processor.image_processor is not None
    assert {c["revision"] for c in calls} == {"r1"}
    fetched = {f for call in calls for f in call["fetched"]}
    assert vq_shard in fetched and not fetched & set(lm_shards)


# ---- dtype -------------------------------------------------------------------------------------

def test_one_dtype_spelling(tmp_path, model):
    model.save_pretrained(tmp_path / "m")
    for dtype in ("bf16", ms.bfloat16):
        assert Emu3ForCausalLM.from_pretrained(tmp_path / "m", dtype=dtype).dtype == ms.bfloat16
    assert Emu3ForCausalLM.from_pretrained(tmp_path / "m", dtype="fp16").dtype == ms.float16
    assert Emu3ForCausalLM.from_pretrained(tmp_path / "m", dtype=ms.float32).dtype == ms.float32
    for other in ("float32", "BF16", "bfloat16"):
        with pytest.raises(ValueError, match=f"unknown dtype '{other}': use one of fp32, fp16, bf16"):
            Emu3ForCausalLM.from_pretrained(tmp_path / "m", dtype=other)
        with pytest.raises(ValueError, match=f"unknown dtype '{other}'"):
            model.save_pretrained(tmp_path / "out", dtype=other)
    assert not (tmp_path / "out").exists()
