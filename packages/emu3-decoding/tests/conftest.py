import mindspore as ms
import pytest
from emu3_decoding.demo import build_demo_lm, random_lm_state
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
def checkpoints(tmp_path_factory):
    """(LM directory, VQ directory) as strings: the demo LM and the tiny vision tokenizer, random
    weights (seed 1), in the original layout; for the command and the pipeline."""
    from emu3_vq.tiny import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    return str(build_demo_lm(root / "lm", seed=1)), str(build_tiny_checkpoint(root / "vq", "tiny", seed=1))


@pytest.fixture(scope="session")
def pipe(checkpoints):
    """An Emu3Pipeline over `checkpoints`, loaded once (its compiled graphs are reused)."""
    from emu3_decoding.pipeline import Emu3Pipeline

    return Emu3Pipeline.from_pretrained(*checkpoints)


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
