"""Training surface of Emu3ForCausalLM against transformers' Emu3ForCausalLM (the oracle).

Same random weights on both sides, fp32, tiny config; a right-padded batch whose labels mask
the prompt and the padding with -100, as the trainers lay them out. The loss and the gradient
of every parameter must agree (max relative error per parameter <= 1e-4), compiled and not,
with and without recompute; explicit positions equal mask-derived ones; the chunked loss
equals an unchunked one; dropout follows set_train.
"""

import mindspore as ms
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from emu3_lm import loss as loss_module  # noqa: E402
from emu3_lm.config import Emu3LMConfig  # noqa: E402
from emu3_lm.loss import IGNORE_INDEX  # noqa: E402
from emu3_lm.model import Emu3ForCausalLM  # noqa: E402

pytestmark = pytest.mark.parity

REL = 1e-4
CFG = Emu3LMConfig.from_name("tiny")


@pytest.fixture(scope="module")
def oracle(oracle_text_config):
    torch.manual_seed(0)
    hf = transformers.Emu3ForCausalLM(oracle_text_config(CFG)).eval()
    with torch.no_grad():  # random norm weights too, so that a swapped norm would show
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return hf


def ours_from(hf, **config_overrides) -> Emu3ForCausalLM:
    model = Emu3ForCausalLM(Emu3LMConfig.from_name("tiny", **config_overrides), dtype=ms.float32,
                            init_weights=False)
    model.load_state_dict({k: v.detach().numpy() for k, v in hf.state_dict().items()})
    model.set_train(False)
    return model


def batch():
    """Three right-padded rows: a prompt (not supervised), a supervised answer, padding."""
    c = CFG
    rng = np.random.default_rng(3)
    lengths, prompts = (19, 14, 9), (6, 4, 5)
    n = max(lengths)
    ids = np.full((3, n), c.pad_token_id, np.int32)
    mask = np.zeros((3, n), np.int32)
    labels = np.full((3, n), IGNORE_INDEX, np.int32)
    for r, (length, prompt) in enumerate(zip(lengths, prompts)):
        ids[r, 0] = c.bos_token_id
        ids[r, 1:length] = rng.integers(0, c.vocab_size, length - 1)
        mask[r, :length] = 1
        labels[r, prompt:length] = ids[r, prompt:length]
    # the pad id as a real input (attended, and once supervised): its embedding row gets no gradient
    ids[0, 3] = ids[1, 8] = c.pad_token_id
    labels[1, 8] = c.pad_token_id
    return ids, mask, labels


def oracle_loss_and_grads(hf, ids, mask, labels):
    hf.zero_grad()
    out = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
             labels=torch.tensor(labels, dtype=torch.long))
    out.loss.backward()
    return float(out.loss), {n: p.grad.numpy().copy() for n, p in hf.named_parameters()}


def ours_loss_and_grads(model, ids, mask, labels, jit=True, **kwargs):
    params = model.trainable_params()

    def fn(i, m, y):
        return model.loss(i, y, attention_mask=m, **kwargs)

    step = ms.value_and_grad(fn, None, params)
    if jit:
        step = ms.jit(step)
    loss, grads = step(ms.Tensor(ids), ms.Tensor(mask), ms.Tensor(labels))
    return float(loss.asnumpy()), {p.name: g.asnumpy() for p, g in zip(params, grads)}


def max_rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module")
def expected(oracle):
    ids, mask, labels = batch()
    return oracle_loss_and_grads(oracle, ids, mask, labels)


def check(loss, grads, expected):
    ref_loss, ref_grads = expected
    assert grads.keys() == ref_grads.keys()  # every parameter gets a gradient
    errors = {n: max_rel(grads[n], ref_grads[n]) for n in ref_grads}
    worst = max(errors, key=errors.get)
    print(f"\nloss {loss:.6f} vs {ref_loss:.6f}; worst relative gradient error {errors[worst]:.2e} ({worst})")
    assert abs(loss - ref_loss) <= REL * abs(ref_loss)
    assert errors[worst] <= REL, errors
    # not vacuous: the gradients are far from zero everywhere
    assert min(np.abs(g).max() for g in ref_grads.values()) > 1e-6


@pytest.mark.parametrize("jit", [True, False], ids=["compiled", "pynative"])
def test_loss_and_every_gradient_match_transformers(oracle, expected, jit):
    ids, mask, labels = batch()
    check(*ours_loss_and_grads(ours_from(oracle), ids, mask, labels, jit=jit), expected)


def test_recompute_gives_the_same_gradients(oracle, expected):
    model = ours_from(oracle)
    for layer in model.model.layers:
        layer.recompute()
    ids, mask, labels = batch()
    check(*ours_loss_and_grads(model, ids, mask, labels), expected)


def test_explicit_positions_equal_mask_derived_ones(oracle, expected):
    ids, mask, labels = batch()
    positions = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape).copy()
    model = ours_from(oracle)
    params = model.trainable_params()

    def fn(i, m, y, p):
        return model.loss(i, y, attention_mask=m, position_ids=p)

    step = ms.jit(ms.value_and_grad(fn, None, params))
    loss, grads = step(ms.Tensor(ids), ms.Tensor(mask), ms.Tensor(labels), ms.Tensor(positions))
    check(float(loss.asnumpy()), {p.name: g.asnumpy() for p, g in zip(params, grads)}, expected)
    # positions do reach the model: a uniform shift changes nothing (RoPE is relative), a restart does
    loss_of = lambda p: float(model.loss(ms.Tensor(ids), ms.Tensor(labels), attention_mask=ms.Tensor(mask),  # noqa: E731
                                         position_ids=ms.Tensor(p)).asnumpy())
    assert abs(loss_of(positions + 5) - expected[0]) < 1e-5
    restarted = positions.copy()
    restarted[:, 8:] -= 8
    assert abs(loss_of(restarted) - expected[0]) > 1e-4  # 50x the float noise of the shift above


def test_chunked_loss_equals_unchunked(oracle, monkeypatch):
    ids, mask, labels = batch()
    whole = ours_loss_and_grads(ours_from(oracle), ids, mask, labels)
    # 7 tokens per chunk: the 54 scored positions split into 8 chunks, the last one short
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 7 * CFG.vocab_size)
    chunked_model = ours_from(oracle)
    assert chunked_model.head_loss.chunk == 7
    chunked = ours_loss_and_grads(chunked_model, ids, mask, labels)
    assert abs(chunked[0] - whole[0]) <= 1e-6 * abs(whole[0])
    for name, g in whole[1].items():
        assert max_rel(chunked[1][name], g) <= 1e-5, name


def test_loss_is_the_mean_over_supervised_positions(oracle):
    """Against a numpy cross-entropy of our own logits: the shift, the mask and the mean; the
    head's per-token weights."""
    ids, mask, labels = batch()
    model = ours_from(oracle)
    logits = model(ms.Tensor(ids), ms.Tensor(mask)).asnumpy().astype(np.float64)
    shifted, target = logits[:, :-1], labels[:, 1:]
    lse = np.log(np.exp(shifted - shifted.max(-1, keepdims=True)).sum(-1)) + shifted.max(-1)
    keep = target != IGNORE_INDEX
    picked = np.take_along_axis(shifted, np.where(keep, target, 0)[..., None], -1)[..., 0]
    want = ((lse - picked) * keep).sum() / keep.sum()
    got = float(model.loss(ms.Tensor(ids), ms.Tensor(labels), attention_mask=ms.Tensor(mask)).asnumpy())
    assert abs(got - want) <= 1e-5 * want
    # per-token weights (a mixture's loss_weight): the head's sum becomes sum(w * ce), and its gradient w.r.t.
    # the hidden states scales row by row
    h = model.hidden_states(ms.Tensor(ids), ms.Tensor(mask))[:, :-1].reshape(-1, CFG.hidden_size)
    w = np.random.default_rng(5).uniform(0.5, 3.0, target.size).astype(np.float32)
    ce = ((lse - picked) * keep).reshape(-1)
    weighted = float(model.head_loss(h, model.lm_head.weight, ms.Tensor(target.reshape(-1)), ms.Tensor(w)).asnumpy())
    assert abs(weighted - (w * ce).sum()) <= 1e-5 * (w * ce).sum()
    plain = model.head_loss(h, model.lm_head.weight, ms.Tensor(target.reshape(-1)))
    ones = model.head_loss(h, model.lm_head.weight, ms.Tensor(target.reshape(-1)), ms.Tensor(np.ones_like(w)))
    assert float(plain.asnumpy()) == float(ones.asnumpy())
    grad = ms.grad(lambda x, y: model.head_loss(x, model.lm_head.weight, ms.Tensor(target.reshape(-1)), y))
    g1, gw = grad(h, ms.Tensor(np.ones_like(w))).asnumpy(), grad(h, ms.Tensor(w)).asnumpy()
    np.testing.assert_allclose(gw, g1 * w[:, None], rtol=1e-5, atol=1e-8)
    # nothing supervised: 0, not NaN
    none = np.full_like(labels, IGNORE_INDEX)
    assert float(model.loss(ms.Tensor(ids), ms.Tensor(none), attention_mask=ms.Tensor(mask)).asnumpy()) == 0.0


def test_dropout_follows_set_train(oracle):
    ids, mask, labels = batch()
    model = ours_from(oracle, attention_dropout=0.3)
    args = (ms.Tensor(ids), ms.Tensor(labels))
    evals = {float(model.loss(*args, attention_mask=ms.Tensor(mask)).asnumpy()) for _ in range(2)}
    assert len(evals) == 1  # deterministic in eval mode, and equal to the dropout-free oracle's
    model.set_train(True)
    trains = [float(model.loss(*args, attention_mask=ms.Tensor(mask)).asnumpy()) for _ in range(2)]
    model.set_train(False)
    assert trains[0] != trains[1] and all(t not in evals for t in trains)
