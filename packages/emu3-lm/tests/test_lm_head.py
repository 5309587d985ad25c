"""lm_head: the checkpoint's [vocab, hidden] on every device, in parameters and in files; head
slices equal the full head's columns; strict errors in the file's own terms."""

import dataclasses

import mindspore as ms
import numpy as np
import pytest
from emu3_lm.config import Emu3LMConfig
from emu3_lm.model import Emu3ForCausalLM
from emu3_vq import device
from emu3_vq.weights import CheckpointError, checkpoint_keys
from mindspore import Tensor

CFG = Emu3LMConfig.from_name("tiny")


@pytest.fixture(scope="module")
def model():
    ms.set_seed(0)
    m = Emu3ForCausalLM(CFG, dtype=ms.float32)
    m.set_train(False)
    return m


@pytest.mark.parametrize("target", ["CPU", "GPU", "Ascend"])
def test_parameter_shapes_are_the_checkpoint_shapes_whatever_the_device(model, monkeypatch, target):
    # the device policy may change kernels and dtype, never a parameter's shape
    chosen = dataclasses.replace(device.policy(target), attention="matmul")  # flash builds on Ascend only
    monkeypatch.setattr(device, "policy", lambda t=None: chosen)
    other = Emu3ForCausalLM(CFG, init_weights=False)
    assert other.dtype == chosen.dtype
    shapes = {name: tuple(p.shape) for name, p in other.parameters_and_names()}
    assert shapes == other.checkpoint_shapes() == model.checkpoint_shapes()
    assert shapes["lm_head.weight"] == (CFG.vocab_size, CFG.hidden_size)


def test_head_slices_are_columns_of_the_full_logits(model):
    rng = np.random.default_rng(0)
    h = Tensor(rng.standard_normal((2, 3, CFG.hidden_size)).astype(np.float32))
    full = model.logits(h).asnumpy()
    w = model.lm_head.weight.asnumpy()
    np.testing.assert_allclose(full, h.asnumpy() @ w.T, rtol=1e-5, atol=1e-5)
    lo, hi = CFG.visual_token_range
    for start, stop in ((0, CFG.vocab_size), (lo, hi), (5, 9)):
        part = model.logits(h, start, stop).asnumpy()
        assert part.shape == (2, 3, stop - start)
        np.testing.assert_allclose(part, full[..., start:stop], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="start < stop"):
        model.logits(h, 9, 5)


@pytest.mark.parametrize("layout", ["original", "hf"])
def test_saved_head_is_vocab_by_hidden_and_loads_back(model, tmp_path, layout):
    model.save_pretrained(tmp_path, layout=layout)
    key = "lm_head.weight" if layout == "original" else "text_model.lm_head.weight"
    assert tuple(checkpoint_keys(tmp_path)[key][1]) == (CFG.vocab_size, CFG.hidden_size)
    expect = model.state_dict()
    got = Emu3ForCausalLM.from_pretrained(tmp_path, dtype=ms.float32).state_dict()
    assert got.keys() == expect.keys()
    for name in expect:
        np.testing.assert_array_equal(got[name], expect[name], err_msg=name)


def test_load_state_dict_is_strict(model):
    state = model.state_dict()
    bad = dict(state, **{"lm_head.weight": state["lm_head.weight"].T.copy()})
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        Emu3ForCausalLM(CFG, dtype=ms.float32, init_weights=False).load_state_dict(bad)
    missing = {k: v for k, v in state.items() if k != "model.norm.weight"}
    with pytest.raises(CheckpointError, match="model.norm.weight"):
        Emu3ForCausalLM(CFG, dtype=ms.float32, init_weights=False).load_state_dict(missing)


def test_a_misshapen_head_is_named_with_both_shapes(model, tmp_path):
    from emu3_vq.weights import write_checkpoint

    model.save_pretrained(tmp_path)
    state = model.state_dict()
    state["lm_head.weight"] = state["lm_head.weight"][:-1]  # one vocabulary row short
    write_checkpoint(tmp_path, state)
    with pytest.raises(CheckpointError, match=r"lm_head.weight.*730, 64.*731, 64"):
        Emu3ForCausalLM.from_pretrained(tmp_path, dtype=ms.float32)
