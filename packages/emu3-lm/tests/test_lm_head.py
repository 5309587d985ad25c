"""lm_head storage: W^T on CPU (faster MatMul there), W elsewhere; the same logits, and
checkpoints always in the [vocab, hidden] orientation."""

import mindspore as ms
import numpy as np
import pytest
from emu3_lm.config import Emu3LMConfig
from emu3_lm.model import Emu3ForCausalLM
from emu3_vq.weights import CheckpointError, checkpoint_keys
from mindspore import Tensor

CFG = Emu3LMConfig.from_name("tiny")


@pytest.fixture(scope="module")
def pair():
    ms.set_seed(0)
    plain = Emu3ForCausalLM(CFG, dtype=ms.float32, transposed_head=False)
    turned = Emu3ForCausalLM(CFG, dtype=ms.float32, init_weights=False, transposed_head=True)
    turned.load_state_dict(plain.state_dict())
    for m in (plain, turned):
        m.set_train(False)
    return plain, turned


def test_cpu_default_is_transposed_and_checkpoint_shapes_are_not():
    model = Emu3ForCausalLM(CFG, dtype=ms.float32, init_weights=False)
    assert model.lm_head.transposed  # these tests run on CPU
    assert tuple(model.lm_head.weight.shape) == (CFG.hidden_size, CFG.vocab_size)
    assert model.checkpoint_shapes()["lm_head.weight"] == (CFG.vocab_size, CFG.hidden_size)


def test_both_storages_give_the_same_logits_and_state(pair):
    plain, turned = pair
    np.testing.assert_array_equal(plain.lm_head.weight.asnumpy().T, turned.lm_head.weight.asnumpy())
    state_p, state_t = plain.state_dict(), turned.state_dict()
    assert state_p.keys() == state_t.keys()
    for name in state_p:
        np.testing.assert_array_equal(state_p[name], state_t[name], err_msg=name)
    rng = np.random.default_rng(0)
    ids = Tensor(rng.integers(0, CFG.vocab_size, (2, 7)).astype(np.int32))
    full = [m(ids).asnumpy() for m in pair]
    np.testing.assert_allclose(full[0], full[1], rtol=1e-5, atol=1e-5)
    h = Tensor(rng.standard_normal((2, 3, CFG.hidden_size)).astype(np.float32))
    lo, hi = CFG.first_visual_token_id, CFG.first_visual_token_id + CFG.num_visual_tokens
    for start, stop in ((0, CFG.vocab_size), (lo, hi), (5, 9)):
        a, b = (m.logits(h, start, stop).asnumpy() for m in pair)
        assert a.shape == (2, 3, stop - start)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a, plain.logits(h).asnumpy()[..., start:stop], rtol=1e-5, atol=1e-5)
    w = state_p["lm_head.weight"]
    for m in pair:
        np.testing.assert_array_equal(m.lm_head.rows(lo, hi).asnumpy(), w[lo:hi])


@pytest.mark.parametrize("layout", ["original", "hf"])
def test_saved_head_is_vocab_by_hidden_and_loads_into_either_storage(pair, tmp_path, layout):
    plain, turned = pair
    turned.save_pretrained(tmp_path, layout=layout)
    key = "lm_head.weight" if layout == "original" else "text_model.lm_head.weight"
    assert tuple(checkpoint_keys(tmp_path)[key][1]) == (CFG.vocab_size, CFG.hidden_size)
    expect = plain.state_dict()
    for transposed in (False, True):
        loaded = Emu3ForCausalLM.from_pretrained(tmp_path, dtype=ms.float32)
        if not transposed:  # the non-CPU storage, loaded through the same state-dict path
            other = Emu3ForCausalLM(CFG, dtype=ms.float32, init_weights=False, transposed_head=False)
            other.load_state_dict(loaded.state_dict())
            loaded = other
        assert loaded.lm_head.transposed == transposed
        got = loaded.state_dict()
        for name in expect:
            np.testing.assert_array_equal(got[name], expect[name], err_msg=name)


def test_load_state_dict_is_strict_in_checkpoint_orientation(pair):
    _, turned = pair
    state = turned.state_dict()
    bad = dict(state, **{"lm_head.weight": state["lm_head.weight"].T.copy()})  # the stored orientation
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        Emu3ForCausalLM(CFG, dtype=ms.float32, init_weights=False).load_state_dict(bad)
    missing = {k: v for k, v in state.items() if k != "model.norm.weight"}
    with pytest.raises(CheckpointError, match="model.norm.weight"):
        Emu3ForCausalLM(CFG, dtype=ms.float32, init_weights=False).load_state_dict(missing)


def test_a_misshapen_head_is_named_in_the_file_orientation(pair, tmp_path):
    from emu3_vq.weights import write_checkpoint

    plain, _ = pair
    plain.save_pretrained(tmp_path)
    state = plain.state_dict()
    state["lm_head.weight"] = state["lm_head.weight"][:-1]  # one vocabulary row short
    write_checkpoint(tmp_path, state)
    with pytest.raises(CheckpointError, match=r"lm_head.weight is \[730, 64\] in the checkpoint, the model "
                                              r"needs \[731, 64\]"):
        Emu3ForCausalLM.from_pretrained(tmp_path, dtype=ms.float32)
