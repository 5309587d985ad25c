"""VQ checkpoints: the key tables, both layouts, sharding, strict errors, transformers compatibility."""

import json

import numpy as np
import pytest
from emu3_vq import weights
from emu3_vq.checkpoint import (
    HF_TO_ORIGINAL,
    ORIGINAL_TO_HF,
    detect_layout,
    hf_config_dict,
    hf_to_original,
    original_to_hf,
    state_to_hf,
    state_to_original,
)
from emu3_vq.config import Emu3VQConfig
from emu3_vq.model import Emu3VQModel
from emu3_vq.weights import CheckpointError
from mindspore import Tensor

# two blocks per level so that `attn.1` / `attn_norms.1` and `time_res_stack.1` exist
SMALL = dict(codebook_size=16, ch=32, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(1,))


def _randomized(config=None, seed=0) -> Emu3VQModel:
    """A model (not compiled: jit=False) whose every parameter, BatchNorm statistics included,
    holds random values."""
    model = Emu3VQModel(config or Emu3VQConfig(**SMALL), jit=False)
    rng = np.random.default_rng(seed)
    for name, p in model.parameters_and_names():
        if name.endswith("num_batches_tracked"):
            p.set_data(Tensor(np.array(int(rng.integers(1, 100)), np.int64)))
        elif name.endswith("running_var"):
            p.set_data(Tensor(rng.uniform(0.5, 2, p.shape).astype(np.float32)))
        else:
            p.set_data(Tensor(rng.standard_normal(p.shape).astype(np.float32)))
    return model


def _state(model) -> dict:
    return weights.state_dict_numpy(model)


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def model():
    return _randomized()


# ---- the key tables --------------------------------------------------------------------

def test_rules_are_literal_tables():
    assert len(ORIGINAL_TO_HF) == len(HF_TO_ORIGINAL) == 9
    assert original_to_hf("encoder.down.1.attn.1.norm.weight") == "encoder.down_block.down.1.attn_norms.1.weight"
    assert original_to_hf("encoder.mid.attn_1.norm.bias") == "encoder.middle_block.attn_norm.bias"
    assert original_to_hf("encoder.mid.attn_1.q.weight") == "encoder.middle_block.attn_1.q_proj.weight"
    assert original_to_hf("decoder.up.3.attn.2.proj_out.bias") == "decoder.up_block.up.3.attn.2.out_proj.bias"
    assert (original_to_hf("decoder.up.3.attn.0.norm.conv_y.weight")
            == "decoder.up_block.up.3.attn_norms.0.conv_y.weight")
    assert original_to_hf("encoder.time_res_stack.0.norm1.running_mean") == "encoder.time_res_stack.0.norm1.running_mean"
    assert original_to_hf("quantize.embedding.weight") == "quantize.embedding.weight"
    assert hf_to_original("decoder.middle_block.attn_norm.norm_layer.weight") == "decoder.mid.attn_1.norm.norm_layer.weight"


@pytest.mark.parametrize("config", [Emu3VQConfig(**SMALL), Emu3VQConfig.from_name("tiny"), Emu3VQConfig.from_name("micro")])
def test_renames_round_trip_for_every_parameter(config):
    names = [n for n, _ in Emu3VQModel(config, jit=False).parameters_and_names()]
    hf = [original_to_hf(n) for n in names]
    assert len(set(hf)) == len(names)
    assert [hf_to_original(n) for n in hf] == names
    assert detect_layout(hf) == "hf" and detect_layout(names) == "original"


@pytest.mark.parity
def test_hf_names_and_shapes_equal_transformers_state_dict(model):
    transformers = pytest.importorskip("transformers")
    hf = {k: v for k, v in hf_config_dict(model.config).items() if k not in ("model_type", "architectures")}
    peer = transformers.Emu3VQVAE(transformers.Emu3VQVAEConfig(**hf))
    theirs = {k: tuple(v.shape) for k, v in peer.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in state_to_hf(_state(model)).items()}
    assert ours == theirs


def test_attention_projections_change_rank_between_layouts(model):
    state = _state(model)
    assert state["encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    hf = state_to_hf(state)
    assert hf["encoder.middle_block.attn_1.q_proj.weight"].shape == (64, 64)
    assert hf["decoder.up_block.up.1.attn.1.out_proj.weight"].shape == (64, 64)
    _assert_same(state_to_original(hf), state)


# ---- round trips -------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["original", "hf"])
def test_save_and_load_round_trip(model, tmp_path, layout):
    model.save_pretrained(tmp_path, layout=layout)
    config = json.loads((tmp_path / "config.json").read_text())
    keys = weights.checkpoint_keys(tmp_path)
    if layout == "hf":
        assert config["model_type"] == "emu3_vqgan" and config["base_channels"] == 32
        assert "encoder.middle_block.attn_norm.weight" in keys
    else:
        assert config["ch"] == 32
        assert "encoder.mid.attn_1.norm.weight" in keys
    assert keys["encoder.time_res_stack.1.norm2.num_batches_tracked"] == ("I64", ())
    loaded = Emu3VQModel.from_pretrained(tmp_path, jit=False)
    assert loaded.config == model.config
    _assert_same(_state(loaded), _state(model))


def test_sharded_hf_checkpoint(model, tmp_path):
    model.save_pretrained(tmp_path, layout="hf", max_shard_bytes=100_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert not (tmp_path / "model.safetensors").exists()
    _assert_same(_state(Emu3VQModel.from_pretrained(tmp_path, jit=False)), _state(model))


def test_bf16_checkpoint_loads_rounded(model, tmp_path):
    model.save_pretrained(tmp_path, dtype="bf16")
    assert weights.checkpoint_keys(tmp_path)["quantize.embedding.weight"][0] == "BF16"
    loaded = _state(Emu3VQModel.from_pretrained(tmp_path, jit=False))
    for k, v in _state(model).items():
        np.testing.assert_allclose(loaded[k], v, rtol=1e-2, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("prefix", ["vqmodel.", "model.vqmodel."])
def test_combined_emu3_hf_checkpoint_takes_the_vq_and_ignores_the_rest(model, tmp_path, prefix):
    tensors = {prefix + k: v for k, v in state_to_hf(_state(model)).items()}
    tensors["text_model.model.embed_tokens.weight"] = np.zeros((10, 8), np.float32)
    tensors["text_model.lm_head.weight"] = np.zeros((10, 8), np.float32)
    weights.write_checkpoint(tmp_path, tensors, max_shard_bytes=200_000)
    config = {"model_type": "emu3", "vq_config": hf_config_dict(model.config), "text_config": {"hidden_size": 8}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    _assert_same(_state(Emu3VQModel.from_pretrained(tmp_path, jit=False)), _state(model))


def test_combined_checkpoint_without_vq_is_an_error(model, tmp_path):
    weights.write_checkpoint(tmp_path, {"text_model.lm_head.weight": np.zeros((2, 2), np.float32)})
    (tmp_path / "config.json").write_text(json.dumps({"vq_config": hf_config_dict(model.config)}))
    with pytest.raises(CheckpointError, match="vqmodel"):
        Emu3VQModel.from_pretrained(tmp_path)


# ---- strict loading ----------------------------------------------------------------------

def _write(tmp_path, model, layout, edit):
    state = _state(model)
    if layout == "hf":
        state = state_to_hf(state)
        config = hf_config_dict(model.config)
    else:
        config = model.config.to_dict("original")
    edit(state)
    weights.write_checkpoint(tmp_path, state)
    (tmp_path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("layout,key", [
    ("original", "encoder.time_res_stack.0.norm1.running_var"),
    ("original", "decoder.up.1.attn.0.norm.conv_b.bias"),
    ("hf", "decoder.up_block.up.1.attn_norms.0.conv_b.bias"),
    ("hf", "quantize.embedding.weight"),
])
def test_missing_key_is_named(model, tmp_path, layout, key):
    _write(tmp_path, model, layout, lambda s: s.pop(key))
    with pytest.raises(CheckpointError, match="1 missing keys: " + key.replace(".", r"\.")):
        Emu3VQModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("layout", ["original", "hf"])
def test_unexpected_key_is_named(model, tmp_path, layout):
    _write(tmp_path, model, layout, lambda s: s.update({"encoder.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match=r"1 unexpected keys: encoder\.extra\.weight"):
        Emu3VQModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("layout,key,shape", [
    ("original", "encoder.mid.attn_1.q.weight", (64, 64)),  # the -hf shape in an original file
    ("hf", "encoder.middle_block.attn_1.q_proj.weight", (64, 64, 1, 1)),  # and the other way round
    ("original", "quantize.embedding.weight", (16, 8)),
])
def test_shape_mismatch_is_named(model, tmp_path, layout, key, shape):
    _write(tmp_path, model, layout, lambda s: s.update({key: np.zeros(shape, np.float32)}))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.") + r" \(checkpoint \[" + str(shape[0])):
        Emu3VQModel.from_pretrained(tmp_path)


def test_checkpoint_errors_are_value_errors_and_list_at_most_ten(model, tmp_path):
    def drop_encoder(s):
        for k in [k for k in s if k.startswith("encoder.")]:
            s.pop(k)

    _write(tmp_path, model, "original", drop_encoder)
    with pytest.raises(ValueError, match=r"missing keys: .*\(\d+ more\)"):
        Emu3VQModel.from_pretrained(tmp_path)


def test_missing_files_and_bad_layout(model, tmp_path):
    with pytest.raises(FileNotFoundError):
        Emu3VQModel.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        Emu3VQModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    with pytest.raises(FileNotFoundError):
        Emu3VQModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="layout"):
        model.save_pretrained(tmp_path / "x", layout="mindone")


# ---- transformers reads what we write ------------------------------------------------------

@pytest.mark.parity
def test_transformers_loads_our_hf_save(model, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model.save_pretrained(tmp_path, layout="hf")
    peer = transformers.Emu3VQVAE.from_pretrained(tmp_path)
    theirs = {k: v.numpy() for k, v in peer.state_dict().items()}
    _assert_same(theirs, state_to_hf(_state(model)))
    # and a strict load_state_dict of the file's tensors into a fresh model
    hf = {k: v for k, v in hf_config_dict(model.config).items() if k not in ("model_type", "architectures")}
    fresh = transformers.Emu3VQVAE(transformers.Emu3VQVAEConfig(**hf))
    tensors = {k: torch.tensor(np.array(v)) for k, v in weights.iter_checkpoint(tmp_path)}
    fresh.load_state_dict(tensors, strict=True)
