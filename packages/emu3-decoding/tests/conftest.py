import mindspore as ms
import pytest
from emu3_decoding.demo import random_lm_state
from emu3_lm.blocks import VisualIds
from emu3_lm.config import Emu3LMConfig
from emu3_lm.model import Emu3ForCausalLM


@pytest.fixture(scope="session")
def tiny_model():
    """The 'tiny' LM with fixed random weights (std 0.1: decisive logits, prompts that matter)."""
    cfg = Emu3LMConfig.from_name("tiny", initializer_range=0.1)
    model = Emu3ForCausalLM(cfg, dtype=ms.float32, init_weights=False)
    model.load_state_dict(random_lm_state(cfg, seed=0))
    model.set_train(False)
    return model


@pytest.fixture(scope="session")
def ids(tiny_model):
    return VisualIds.from_config(tiny_model.config)


def _original_rule(offset, height, width, ids):
    """Emu3PrefixConstrainedLogitsHelper: the allowed tokens at `offset` after the img token,
    or "visual" for any visual token."""
    if offset % (width + 1) == 0:
        return (ids.eol,)
    if offset == (width + 1) * height + 1:
        return (ids.eof,)
    if offset == (width + 1) * height + 2:
        return (ids.eoi,)
    if offset == (width + 1) * height + 3:
        return (ids.eos,)
    if offset > (width + 1) * height + 3:
        return (ids.pad,)
    return "visual"


@pytest.fixture(scope="session")
def original_rule():
    """The original prefix-constraint rule, written out once for the constraint and parity tests."""
    return _original_rule
