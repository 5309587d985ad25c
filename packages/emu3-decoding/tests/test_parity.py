"""Greedy decoding against transformers' `generate` with the same random weights.

The original recipe in transformers: `UnbatchedClassifierFreeGuidanceLogitsProcessor` then
`PrefixConstrainedLogitsProcessor` with the original prefix helper. Ours: the constraint table,
only the visual slice of lm_head, guidance batched or unbatched. Greedy, so the token sequences
must be identical. Also free-text greedy decoding (the VQA path).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mindspore as ms
from emu3_decoding.loop import generate
from emu3_lm.blocks import VisualIds, image_table
from emu3_lm.config import Emu3LMConfig
from emu3_lm.model import Emu3ForCausalLM
from transformers.generation import (
    LogitsProcessorList,
    PrefixConstrainedLogitsProcessor,
    UnbatchedClassifierFreeGuidanceLogitsProcessor,
)

pytestmark = pytest.mark.parity

CFG = Emu3LMConfig.from_name("tiny")
IDS = VisualIds.from_config(CFG)
H, W = 4, 5


def original_prefix_fn(rule, height, width):
    """The original Emu3PrefixConstrainedLogitsHelper as transformers' prefix_allowed_tokens_fn."""
    visual = list(range(IDS.visual_start, IDS.visual_stop))

    def fn(batch_id, input_ids):
        pos = torch.nonzero(input_ids == IDS.img, as_tuple=True)[0][0]
        allowed = rule(int(input_ids.shape[0] - pos), height, width, IDS)
        return visual if allowed == "visual" else allowed

    return fn


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.Emu3TextConfig(
        vocab_size=CFG.vocab_size, hidden_size=CFG.hidden_size, intermediate_size=CFG.intermediate_size,
        num_hidden_layers=CFG.num_hidden_layers, num_attention_heads=CFG.num_attention_heads,
        num_key_value_heads=CFG.num_key_value_heads, max_position_embeddings=CFG.max_position_embeddings,
        rms_norm_eps=CFG.rms_norm_eps, pad_token_id=CFG.pad_token_id, bos_token_id=CFG.bos_token_id,
        eos_token_id=CFG.eos_token_id, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        initializer_range=0.1)  # larger than 0.02: decisive logits, prompts that matter
    hf = transformers.Emu3ForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("lm")
    hf.save_pretrained(path)
    ours = Emu3ForCausalLM.from_pretrained(path, dtype=ms.float32)
    assert ours.config.first_visual_token_id == IDS.visual_start
    return hf, ours


def prompt(text):
    # bos + text + boi + "{H}*{W}" (any ordinary ids) + img
    return [IDS.bos, *text, IDS.boi, 52, 42, 53, IDS.img]


PROMPTS = [prompt([11, 12, 13, 14, 15, 16, 17]), prompt([21, 22, 23])]
NEGATIVE = prompt([31, 32, 33, 34, 35])


def hf_generate(hf, ids, new_tokens, negative=None, scale=1.0, constrained=True, rule=None):
    """Greedy `generate`. With guidance, the processors of the original image_generation.py
    (guidance, then the prefix constraint); without, `prefix_allowed_tokens_fn`."""
    kwargs = {}
    if negative is not None:
        kwargs["logits_processor"] = LogitsProcessorList([
            UnbatchedClassifierFreeGuidanceLogitsProcessor(scale, hf,
                                                           unconditional_ids=torch.tensor([negative])),
            PrefixConstrainedLogitsProcessor(original_prefix_fn(rule, H, W), num_beams=1),
        ])
    elif constrained:
        kwargs["prefix_allowed_tokens_fn"] = original_prefix_fn(rule, H, W)
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          do_sample=False, max_new_tokens=new_tokens, eos_token_id=IDS.eos,
                          pad_token_id=IDS.pad, **kwargs)
    return out[0, len(ids):].numpy()


@pytest.mark.parametrize("which", [0, 1])
def test_constrained_greedy_without_cfg(models, original_rule, which):
    hf, ours = models
    ref = hf_generate(hf, PROMPTS[which], H * (W + 1) + 3, rule=original_rule)
    got = generate(ours, [PROMPTS[which]], table=image_table(H, W, IDS))[0]
    assert len(ref) == H * (W + 1) + 3 and ref[-1] == IDS.eos
    np.testing.assert_array_equal(got, ref)
    assert len(set(got[got >= IDS.visual_start].tolist())) > 1  # not a degenerate run of one code


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_constrained_greedy_with_cfg(models, original_rule, batched):
    hf, ours = models
    table = image_table(H, W, IDS)
    for p in PROMPTS:
        ref = hf_generate(hf, p, len(table), negative=NEGATIVE, scale=3.0, rule=original_rule)
        got = generate(ours, [p], negative_prompts=[NEGATIVE], cfg_scale=3.0, batched_cfg=batched,
                       table=table)[0]
        np.testing.assert_array_equal(got, ref)
    # guidance changes the image: the comparison is not the unguided run again
    assert not np.array_equal(got, hf_generate(hf, PROMPTS[-1], len(table), rule=original_rule))


def test_batch_of_prompts_with_cfg_matches_one_by_one(models):
    # rows of different lengths, left-padded together with their negative rows: the same tokens
    # as each prompt alone (positions come from the mask)
    _, ours = models
    table = image_table(H, W, IDS)
    alone = [generate(ours, [p], negative_prompts=[NEGATIVE], cfg_scale=3.0, table=table)[0] for p in PROMPTS]
    both = generate(ours, PROMPTS, negative_prompts=[NEGATIVE, NEGATIVE], cfg_scale=3.0, table=table)
    np.testing.assert_array_equal(both, np.stack(alone))


def test_free_text_greedy(models):
    hf, ours = models
    ids = PROMPTS[0][:-3]
    ref = hf_generate(hf, ids, 12, constrained=False)
    got = generate(ours, [ids], max_new_tokens=12)[0]
    n = len(ref)  # transformers stops at eos; ours pads after it
    np.testing.assert_array_equal(got[:n], ref)
    assert np.all(got[n:] == IDS.pad)
