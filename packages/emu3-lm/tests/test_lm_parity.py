"""Emu3ForCausalLM against transformers' Emu3ForConditionalGeneration (the oracle), fp32, tiny config.

The oracle is built with random weights and saved twice: by transformers' own save_pretrained
(-hf layout) and in the original BAAI layout (our renames, two shards). Both load with
from_pretrained; logits of a mixed text + image-token batch with left padding must match.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mindspore as ms  # noqa: E402
from emu3_lm.config import Emu3LMConfig  # noqa: E402
from emu3_lm.model import Emu3ForCausalLM  # noqa: E402
from emu3_vq.weights import write_checkpoint  # noqa: E402

pytestmark = pytest.mark.parity

TOL = 1e-4
CFG = Emu3LMConfig.from_name("tiny")
TEXT_CONFIG = {
    **{k: getattr(CFG, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                    "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                                    "rms_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id")},
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
}
VQ_CONFIG = dict(codebook_size=CFG.num_visual_tokens, embed_dim=4, latent_channels=4, base_channels=32,
                 channel_multiplier=[1, 1], num_res_blocks=1, attn_resolutions=[1])


def original_config_json(cfg: Emu3LMConfig) -> dict:
    """config.json as BAAI/Emu3-Gen ships it (written out here, independent of our to_dict)."""
    return {
        "architectures": ["Emu3ForCausalLM"], "model_type": "Emu3", "attention_dropout": 0.1,
        "auto_map": {"AutoConfig": "configuration_emu3.Emu3Config",
                     "AutoModelForCausalLM": "modeling_emu3.Emu3ForCausalLM"},
        "boi_token_id": cfg.boi_token_id, "bos_token_id": cfg.bos_token_id, "eof_token_id": cfg.eof_token_id,
        "eoi_token_id": cfg.eoi_token_id, "eol_token_id": cfg.eol_token_id, "eos_token_id": cfg.eos_token_id,
        "hidden_act": "silu", "hidden_size": cfg.hidden_size, "image_area": cfg.image_area,
        "img_token_id": cfg.img_token_id, "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size, "max_position_embeddings": cfg.max_position_embeddings,
        "num_attention_heads": cfg.num_attention_heads,
        "num_hidden_layers": cfg.num_hidden_layers, "num_key_value_heads": cfg.num_key_value_heads,
        "pad_token_id": cfg.pad_token_id, "pretraining_tp": 1, "rms_norm_eps": cfg.rms_norm_eps,
        "rope_scaling": None, "rope_theta": 1000000.0, "tie_word_embeddings": False, "torch_dtype": "float32",
        "transformers_version": "4.44.0", "use_cache": True, "vocab_size": cfg.vocab_size,
    }


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.Emu3Config(text_config=TEXT_CONFIG, vq_config=VQ_CONFIG,
                                     vocabulary_map={"<image>": CFG.pad_token_id + 3})
    hf = transformers.Emu3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # random norm weights too, so that a swapped norm would show
        for name, p in hf.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    root = tmp_path_factory.mktemp("lm")
    hf_dir = root / "hf"
    hf.save_pretrained(hf_dir)
    # original layout: model.text_model.X -> model.X, lm_head.weight stays; two shards + index
    state = {}
    for name, tensor in hf.state_dict().items():
        if name.startswith("model.text_model."):
            state["model." + name[len("model.text_model."):]] = tensor.numpy()
        elif name == "lm_head.weight":
            state[name] = tensor.numpy()
    orig_dir = root / "original"
    orig_dir.mkdir()
    total = sum(a.nbytes for a in state.values())
    files = write_checkpoint(orig_dir, state, max_shard_bytes=total // 2 + 1)
    assert len(files) >= 3  # several shards and the index
    (orig_dir / "config.json").write_text(json.dumps(original_config_json(CFG)))
    return hf, hf_dir, orig_dir


def batch():
    """Two rows, text with image tokens (boi, size, img, visual rows with eol, eof, eoi); the second shorter,
    left-padded."""
    c = CFG
    rng = np.random.default_rng(1)
    text = rng.integers(0, c.pad_token_id, 12)
    visual = c.first_visual_token_id + rng.integers(0, c.num_visual_tokens, 8)
    row0 = [c.bos_token_id, *text[:6], c.boi_token_id, 20, 42, 20, c.img_token_id,
            *visual[:4], c.eol_token_id, *visual[4:], c.eol_token_id, c.eof_token_id, c.eoi_token_id,
            *text[6:9]]
    row1 = [c.bos_token_id, *text[9:], c.boi_token_id, c.img_token_id, *visual[:3], c.eol_token_id]
    n = len(row0)
    ids = np.full((2, n), c.pad_token_id, np.int32)
    mask = np.zeros((2, n), np.int32)
    ids[0], mask[0] = row0, 1
    ids[1, n - len(row1):], mask[1, n - len(row1):] = row1, 1
    return ids, mask


def oracle_logits(hf, ids, mask):
    # positions from the mask, as generate() computes them (the original does the same)
    pos = torch.tensor(np.maximum(np.cumsum(mask, 1) - 1, 0), dtype=torch.long)
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                 position_ids=pos)
    return out.logits.float().numpy()


@pytest.fixture(scope="module")
def expected(oracle):
    hf, _, _ = oracle
    ids, mask = batch()
    return ids, mask, oracle_logits(hf, ids, mask)


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_logits_match_transformers(oracle, expected, layout):
    _, hf_dir, orig_dir = oracle
    ids, mask, ref = expected
    model = Emu3ForCausalLM.from_pretrained(hf_dir if layout == "hf" else orig_dir, dtype=ms.float32)
    assert model.config.vocab_size == CFG.vocab_size and model.config.pad_token_id == CFG.pad_token_id
    ours = model(ms.Tensor(ids), ms.Tensor(mask)).asnumpy()
    real = mask.astype(bool)
    diff = np.abs(ours - ref)[real].max()
    print(f"\n{layout} layout: max |ours - transformers| over real tokens = {diff:.3g}")
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert diff < TOL
    # the comparison is not vacuous: logits vary across positions and rows
    assert np.abs(ref[0, 1:] - ref[0, :-1]).max() > 100 * TOL


def test_incremental_decoding_matches_full_forward(oracle, expected):
    _, hf_dir, _ = oracle
    ids, mask, ref = expected
    model = Emu3ForCausalLM.from_pretrained(hf_dir, dtype=ms.float32)
    full = model(ms.Tensor(ids), ms.Tensor(mask)).asnumpy()
    n = ids.shape[1]
    prompt = n - 6
    model.setup_cache(2, n + 4)
    h = model.prefill(ms.Tensor(ids[:, :prompt]), ms.Tensor(mask[:, :prompt]))
    steps = [model.logits(h).asnumpy()]
    for j in range(prompt, n):
        h = model.decode_step(ms.Tensor(ids[:, j]), ms.Tensor(j, ms.int32))
        steps.append(model.logits(h).asnumpy())
    got = np.stack(steps, 1)  # logits at positions prompt-1 .. n-1
    d_full = np.abs(got - full[:, prompt - 1:]).max()
    d_oracle = np.abs(got - ref[:, prompt - 1:]).max()
    print(f"\ncache decode vs our full forward {d_full:.3g}, vs transformers {d_oracle:.3g}")
    assert d_full < TOL and d_oracle < TOL
    # the visual slice is the same rows of the head
    start, stop = CFG.visual_token_range
    sliced = model.logits(h, start, stop).asnumpy()
    assert np.abs(sliced - steps[-1][:, start:stop]).max() < 1e-6
