"""Checkpoints: config.json formats, strict key/shape errors, sharded bf16 round trips (hub repo
ids and dtype spellings: test_hub.py)."""

import json

import mindspore as ms
import numpy as np
import pytest
from emu3_lm.config import Emu3LMConfig
from emu3_lm.model import Emu3ForCausalLM
from emu3_vq.weights import (
    CheckpointError,
    bf16_bits_to_float32,
    checkpoint_keys,
    float32_to_bf16_bits,
    read_safetensors,
    write_checkpoint,
)


@pytest.fixture(scope="module")
def model():
    ms.set_seed(0)
    m = Emu3ForCausalLM(Emu3LMConfig.from_name("tiny"), dtype=ms.float32)
    m.set_train(False)
    return m


def params(model) -> dict:
    return model.state_dict()


def bf16_round(x: np.ndarray) -> np.ndarray:
    return bf16_bits_to_float32(float32_to_bf16_bits(x))


# ---- config.json -------------------------------------------------------------------------

def test_presets():
    gen = Emu3LMConfig.from_name("emu3-gen")
    assert (gen.vocab_size, gen.hidden_size, gen.num_hidden_layers, gen.num_key_value_heads) == (
        184622, 4096, 32, 8)
    assert gen.visual_token_range == (151854, 184622)
    assert (gen.eol_token_id, gen.bos_token_id, gen.img_token_id) == (151846, 151849, 151851)
    bench = Emu3LMConfig.from_name("bench-1b")
    assert bench.head_dim == 128 and round(bench.num_parameters() / 1e6) == 468
    with pytest.raises(KeyError, match="unknown Emu3LMConfig preset 'nope'"):
        Emu3LMConfig.from_name("nope")
    with pytest.raises(ValueError, match="num_key_value_heads"):
        Emu3LMConfig.from_name("tiny", num_key_value_heads=3)
    with pytest.raises(ValueError, match="rope_scaling type"):
        Emu3LMConfig.from_name("tiny", rope_scaling={"type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="factor must be a number > 1"):
        Emu3LMConfig.from_name("tiny", rope_scaling={"type": "linear", "factor": 0.5})


def test_config_dict_formats():
    cfg = Emu3LMConfig.from_name("tiny", rope_scaling={"type": "dynamic", "factor": 4.0}, rope_theta=5e5)
    assert Emu3LMConfig.from_dict(cfg.to_dict("original")) == cfg
    hf = {"model_type": "emu3", "text_config": cfg.to_dict("hf"), "vq_config": {}}
    assert hf["text_config"]["rope_parameters"] == {"rope_theta": 5e5, "rope_type": "dynamic", "factor": 4.0}
    back = Emu3LMConfig.from_dict(hf)
    # the -hf text_config has no image ids: they come from the defaults or the vocabulary_map
    assert (back.rope_theta, back.rope_scaling, back.vocab_size, back.pad_token_id) == (
        5e5, {"type": "dynamic", "factor": 4.0}, cfg.vocab_size, cfg.pad_token_id)
    assert back.first_visual_token_id == cfg.first_visual_token_id  # by Emu3's numbering rule
    hf["vocabulary_map"] = {"<|image start|>": cfg.boi_token_id, "<|extra_200|>": cfg.eol_token_id}
    back = Emu3LMConfig.from_dict(hf)
    assert (back.boi_token_id, back.eol_token_id) == (cfg.boi_token_id, cfg.eol_token_id)
    # transformers 4.x style and the original's {"type", "factor"}; rope_type 'default' means none
    old = {**cfg.to_dict("original"), "rope_scaling": {"rope_type": "linear", "factor": 2}}
    assert Emu3LMConfig.from_dict(old).rope_scaling == {"type": "linear", "factor": 2.0}
    assert Emu3LMConfig.from_dict({**old, "rope_scaling": {"rope_type": "default"}}).rope_scaling is None
    with pytest.raises(ValueError, match="layout"):
        cfg.to_dict("gguf")


# ---- round trips -------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["original", "hf"])
def test_sharded_bf16_round_trip(model, tmp_path, layout):
    files = model.save_pretrained(tmp_path, layout=layout, max_shard_bytes=60_000, dtype="bf16")
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "model.safetensors.index.json").is_file()
    assert set(files) == {tmp_path / "config.json", tmp_path / "model.safetensors.index.json", *shards}
    keys = checkpoint_keys(tmp_path)
    assert {dtype for dtype, _ in keys.values()} == {"BF16"}
    prefix = "text_model." if layout == "hf" else ""
    assert f"{prefix}model.layers.1.self_attn.k_proj.weight" in keys and f"{prefix}lm_head.weight" in keys
    config = json.loads((tmp_path / "config.json").read_text())
    assert ("text_config" in config) == (layout == "hf")

    loaded = Emu3ForCausalLM.from_pretrained(tmp_path, dtype=ms.float32)
    before, after = params(model), params(loaded)
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(after[name], bf16_round(before[name]), err_msg=name)
    ids = ms.Tensor(np.arange(10, dtype=np.int32)[None] * 37 % 731)
    d = np.abs(loaded(ids).asnumpy() - model(ids).asnumpy()).max()
    assert 0 < d < 0.05  # bf16 rounding, nothing worse

    # fp32 save of the loaded model is exact, in one file
    model_dir = tmp_path / "fp32"
    loaded.save_pretrained(model_dir, layout=layout)
    assert [p.name for p in model_dir.glob("*.safetensors")] == ["model.safetensors"]
    again = read_safetensors(model_dir / "model.safetensors")
    for name in before:
        np.testing.assert_array_equal(again[prefix + name], after[name])


def test_transformers_in_memory_names_load(model, tmp_path):
    """`model.text_model.*` + `lm_head.weight` (transformers 5.x names) with vqmodel keys beside them."""
    tensors = {("lm_head.weight" if n == "lm_head.weight" else "model.text_model." + n[len("model."):]): a
               for n, a in params(model).items()}
    tensors["model.vqmodel.quantize.embedding.weight"] = np.zeros((64, 4), np.float32)
    write_checkpoint(tmp_path, tensors)
    (tmp_path / "config.json").write_text(json.dumps({"text_config": model.config.to_dict("hf")}))
    loaded = Emu3ForCausalLM.from_pretrained(tmp_path, dtype=ms.float32)
    for name, value in params(model).items():
        np.testing.assert_array_equal(params(loaded)[name], value)


# ---- strict errors -----------------------------------------------------------------------

def write_original(directory, tensors, config):
    write_checkpoint(directory, tensors)
    (directory / "config.json").write_text(json.dumps(config.to_dict("original")))


def test_missing_unexpected_and_misshaped_keys_are_named(model, tmp_path):
    good = params(model)
    cfg = model.config

    missing = dict(good)
    del missing["model.layers.1.mlp.up_proj.weight"]
    write_original(tmp_path / "a", missing, cfg)
    with pytest.raises(CheckpointError, match=r"1 missing keys: model\.layers\.1\.mlp\.up_proj\.weight"):
        Emu3ForCausalLM.from_pretrained(tmp_path / "a")

    extra = {**good, "model.layers.2.mlp.up_proj.weight": good["model.layers.1.mlp.up_proj.weight"]}
    write_original(tmp_path / "b", extra, cfg)
    with pytest.raises(CheckpointError, match=r"unexpected keys: model\.layers\.2\.mlp\.up_proj\.weight"):
        Emu3ForCausalLM.from_pretrained(tmp_path / "b")

    shaped = {**good, "model.norm.weight": np.ones(65, np.float32)}
    write_original(tmp_path / "c", shaped, cfg)
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight \(checkpoint \[65\] vs model \[64\]\)"):
        Emu3ForCausalLM.from_pretrained(tmp_path / "c")

    # a config that disagrees with the weights is caught the same way
    write_original(tmp_path / "d", good, Emu3LMConfig.from_name("tiny", intermediate_size=96))
    with pytest.raises(CheckpointError,
                       match=r"mlp\.gate_proj\.weight \(checkpoint \[128, 64\] vs model \[96, 64\]\)"):
        Emu3ForCausalLM.from_pretrained(tmp_path / "d")

    # -hf layout: an LM key outside the known prefixes is named
    hf = {"text_model." + n: a for n, a in good.items()}
    hf["text_model.extra_head.weight"] = np.zeros(3, np.float32)
    write_checkpoint(tmp_path / "e", hf)
    (tmp_path / "e" / "config.json").write_text(json.dumps({"text_config": cfg.to_dict("hf")}))
    with pytest.raises(CheckpointError, match=r"unexpected keys: text_model\.extra_head\.weight"):
        Emu3ForCausalLM.from_pretrained(tmp_path / "e")


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        Emu3ForCausalLM.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Emu3ForCausalLM.from_pretrained(tmp_path / "empty")
    (tmp_path / "file.safetensors").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="is a file"):
        Emu3ForCausalLM.from_pretrained(tmp_path / "file.safetensors")
    with pytest.raises(ValueError, match="layout must be one of"):
        Emu3ForCausalLM(Emu3LMConfig.from_name("tiny")).save_pretrained(tmp_path / "x", layout="gguf")
