"""The static KV cache: left padding, independent rows, chunked prefill, reuse, errors; RoPE scaling."""

import mindspore as ms
import numpy as np
import pytest
from emu3_lm.config import Emu3LMConfig
from emu3_lm.model import Emu3ForCausalLM

TOL = 1e-4


def tiny(**overrides) -> Emu3ForCausalLM:
    ms.set_seed(0)
    model = Emu3ForCausalLM(Emu3LMConfig.from_name("tiny", **overrides), dtype=ms.float32)
    model.set_train(False)
    return model


@pytest.fixture(scope="module")
def model():
    return tiny()


def tokens(n, seed):
    return np.random.default_rng(seed).integers(0, 731, n).astype(np.int32)


def left_pad(rows, pad=456):
    n = max(len(r) for r in rows)
    ids = np.full((len(rows), n), pad, np.int32)
    mask = np.zeros((len(rows), n), np.int32)
    for i, r in enumerate(rows):
        ids[i, n - len(r):], mask[i, n - len(r):] = r, 1
    return ids, mask


CACHE = 24  # one cache size for the module: the compiled steps are reused across tests


def generate_logits(model, ids, mask, new_tokens, max_len=CACHE):
    """Prefill ids, then feed new_tokens [B, T] one step at a time; logits after each [B, T+1, V]."""
    b, n = ids.shape
    model.setup_cache(b, max_len)
    out = [model.logits(model.prefill(ms.Tensor(ids), ms.Tensor(mask))).asnumpy()]
    for t in range(new_tokens.shape[1]):
        h = model.decode_step(ms.Tensor(new_tokens[:, t]), ms.Tensor(n + t, ms.int32))
        out.append(model.logits(h).asnumpy())
    return np.stack(out, 1)


def test_left_padding_changes_nothing(model):
    short, long = tokens(5, 1), tokens(12, 2)
    new = np.stack([tokens(4, 3), tokens(4, 4)])
    ids, mask = left_pad([short, long])
    batched = generate_logits(model, ids, mask, new)
    # reference: the short row alone, unpadded, prompt and new tokens in one full forward
    alone = model(ms.Tensor(np.concatenate([short, new[0]])[None])).asnumpy()[0, 4:]
    d = np.abs(batched[0] - alone).max()
    assert d < TOL, d
    # the full forward agrees on the real tokens too
    full_batched = model(ms.Tensor(ids), ms.Tensor(mask)).asnumpy()[0, -5:]
    assert np.abs(alone[0] - full_batched[-1]).max() < TOL
    # and padding is not a no-op by accident: without the mask the result changes
    unmasked = model(ms.Tensor(ids), ms.Tensor(np.ones_like(mask))).asnumpy()[0, -5:]
    assert np.abs(unmasked - full_batched).max() > 100 * TOL


def test_batch_rows_are_independent(model):
    a, b1, b2 = tokens(12, 5), tokens(12, 6), tokens(12, 7)
    new = np.stack([tokens(4, 8), tokens(4, 9)])
    ones = np.ones((2, 12), np.int32)
    first = generate_logits(model, np.stack([a, b1]), ones, new)
    second = generate_logits(model, np.stack([a, b2]), ones, new)
    assert np.abs(first[0] - second[0]).max() < 1e-6
    assert np.abs(first[1] - second[1]).max() > 100 * TOL


def test_extend_in_chunks_equals_prefill(model):
    ids, mask = left_pad([tokens(7, 10), tokens(12, 11)])
    next_tokens = ms.Tensor(np.array([5, 6], np.int32))
    model.setup_cache(2, CACHE)
    h_prefill = model.prefill(ms.Tensor(ids), ms.Tensor(mask)).asnumpy()
    step_prefill = model.decode_step(next_tokens, ms.Tensor(12, ms.int32)).asnumpy()
    model.setup_cache(2, CACHE)
    model.prefill(ms.Tensor(ids[:, :4]), ms.Tensor(mask[:, :4]))
    h = model.extend(ms.Tensor(ids[:, 4:]), ms.Tensor(mask[:, 4:]), ms.Tensor(4, ms.int32)).asnumpy()
    assert h.shape == (2, 8, 64)
    assert np.abs(h[:, -1] - h_prefill).max() < TOL
    step = model.decode_step(next_tokens, ms.Tensor(12, ms.int32)).asnumpy()
    assert np.abs(step - step_prefill).max() < TOL


def test_cache_reuse_forgets_the_previous_sequence(model):
    long_ids = np.stack([tokens(12, 12), tokens(12, 13)])
    new = np.stack([tokens(4, 14), tokens(4, 15)])
    generate_logits(model, long_ids, np.ones((2, 12), np.int32), new)
    cache = model.cache
    short = np.stack([tokens(4, 16), tokens(4, 17)])  # shorter: stale slots 4..15 must be ignored
    reused = generate_logits(model, short, np.ones((2, 4), np.int32), new)
    assert model.cache is cache  # same size: same buffers, same compiled steps
    expect = model(ms.Tensor(np.concatenate([short, new], 1))).asnumpy()[:, 3:]
    assert np.abs(reused - expect).max() < TOL


def test_cache_layout_and_errors(model):
    model.setup_cache(2, CACHE)
    k, v = model.cache.layer(0)
    assert k.shape == (2, 2, CACHE, 16) and v.shape == (2, 2, CACHE, 16)
    with pytest.raises(ValueError, match=f"do not fit the cache of {CACHE}"):
        model.prefill(ms.Tensor(np.zeros((2, CACHE + 1), np.int32)))
    with pytest.raises(ValueError, match=r"\[2, L\]"):
        model.prefill(ms.Tensor(np.zeros((3, 4), np.int32)))
    with pytest.raises(ValueError, match="left padding"):
        right_padded = ms.Tensor(np.array([[1, 1, 1, 0], [1, 1, 1, 1]]))
        model.prefill(ms.Tensor(np.zeros((2, 4), np.int32)), right_padded)
    with pytest.raises(ValueError, match="must be integer"):
        model.prefill(ms.Tensor(np.zeros((2, 4), np.float32)))
    with pytest.raises(ValueError, match="outside the cache"):
        model.decode_step(ms.Tensor(np.zeros(2, np.int32)), ms.Tensor(CACHE, ms.int32))
    with pytest.raises(ValueError, match=r"tokens must be \[2\]"):
        model.decode_step(ms.Tensor(np.zeros(3, np.int32)), ms.Tensor(4, ms.int32))
    with pytest.raises(ValueError, match="start < stop"):
        model.logits(ms.Tensor(np.zeros((2, 64), np.float32)), 10, 5)
    with pytest.raises(RuntimeError, match="setup_cache"):
        tiny().decode_step(ms.Tensor(np.zeros(2, np.int32)), ms.Tensor(0, ms.int32))


def test_dropout_only_in_training():
    model = tiny()
    ids = ms.Tensor(tokens(8, 15)[None])
    eval_a = model(ids).asnumpy()
    model.set_train(True)
    train_a, train_b = model(ids).asnumpy(), model(ids).asnumpy()
    model.set_train(False)
    assert np.abs(model(ids).asnumpy() - eval_a).max() == 0
    assert np.abs(train_a - eval_a).max() > 1e-3 and np.abs(train_a - train_b).max() > 1e-3


# ---- RoPE scaling against transformers ---------------------------------------------------

@pytest.mark.parity
@pytest.mark.parametrize("scaling", [{"type": "linear", "factor": 2.0}, {"type": "dynamic", "factor": 2.0}])
def test_rope_scaling_matches_transformers(scaling):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = Emu3LMConfig.from_name("tiny", max_position_embeddings=16, rope_theta=10000.0, rope_scaling=scaling)
    torch.manual_seed(0)
    text_config = transformers.Emu3TextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
        rope_parameters={"rope_type": scaling["type"], "factor": scaling["factor"],
                         "rope_theta": cfg.rope_theta})
    hf = transformers.Emu3ForCausalLM(text_config).eval()
    model = Emu3ForCausalLM(cfg, dtype=ms.float32, init_weights=False)
    model.load_state_dict({k: v.numpy() for k, v in hf.state_dict().items()})
    model.set_train(False)

    ids, mask = left_pad([tokens(24, 16), tokens(19, 17)])  # longer than max_position_embeddings
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(pos)).logits.numpy()
    ours = model(ms.Tensor(ids), ms.Tensor(mask)).asnumpy()
    real = mask.astype(bool)
    assert np.abs(ours - ref)[real].max() < TOL

    # incremental decoding past max_position_embeddings vs transformers' DynamicCache
    prompt = 10
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(ids[:, :prompt], dtype=torch.long),
                 attention_mask=torch.tensor(mask[:, :prompt]), position_ids=torch.tensor(pos[:, :prompt]),
                 use_cache=True)
        ref_steps, past = [out.logits[:, -1].numpy()], out.past_key_values
        for j in range(prompt, ids.shape[1]):
            out = hf(input_ids=torch.tensor(ids[:, j:j + 1], dtype=torch.long),
                     attention_mask=torch.tensor(mask[:, :j + 1]), position_ids=torch.tensor(pos[:, j:j + 1]),
                     past_key_values=past, use_cache=True)
            ref_steps.append(out.logits[:, -1].numpy())
            past = out.past_key_values
    got = generate_logits(model, ids[:, :prompt], mask[:, :prompt], ids[:, prompt:])
    d = np.abs(got - np.stack(ref_steps, 1)).max()
    assert d < TOL, d
