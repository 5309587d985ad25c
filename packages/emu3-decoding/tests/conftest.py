import mindspore as ms
import pytest
from emu3_decoding.constraint import VisualIds
from emu3_decoding.demo import random_lm_state
from emu3_lm.config import Emu3LMConfig
from emu3_lm.model import Emu3ForCausalLM
from mindspore import Tensor


@pytest.fixture(scope="session")
def tiny_model():
    """The 'tiny' LM with fixed random weights (std 0.1: decisive logits, prompts that matter)."""
    cfg = Emu3LMConfig.from_name("tiny", initializer_range=0.1)
    model = Emu3ForCausalLM(cfg, dtype=ms.float32, init_weights=False)
    state = random_lm_state(cfg, seed=0)
    for name, p in model.parameters_and_names():
        p.set_data(Tensor(state[name]))
    model.set_train(False)
    return model


@pytest.fixture(scope="session")
def ids(tiny_model):
    return VisualIds.from_config(tiny_model.config)
