"""Every field of Emu3LMConfig is checked in one place (`__post_init__`): type, range and the
relations between fields. A config.json read through `from_json_file` (the API) or
`Emu3ForCausalLM.from_pretrained` names the file and the field; a refused save leaves nothing."""

import json
import math

import mindspore as ms
import pytest
from emu3_lm.blocks import VisualIds
from emu3_lm.config import Emu3LMConfig
from emu3_lm.model import Emu3ForCausalLM

TINY = Emu3LMConfig.from_name("tiny")  # vocab 731, visual tokens [667, 731), hidden 64, 4 heads, 2 kv heads


def write_config(directory, content) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(json.dumps(content), encoding="utf-8")  # NaN and Infinity written as JSON allows them
    return str(path)


@pytest.mark.parametrize("field, value, message", [
    ("hidden_size", "64", "hidden_size must be an integer, got '64'"),
    ("num_hidden_layers", None, "num_hidden_layers must be an integer, got None"),
    ("intermediate_size", True, "intermediate_size must be an integer, got True"),
    ("max_position_embeddings", 1.5, "max_position_embeddings must be an integer, got 1.5"),
    ("vocab_size", 0, "vocab_size must be >= 1, got 0"),
    ("num_attention_heads", 0, "num_attention_heads must be >= 1, got 0"),
    ("image_area", -5, "image_area must be >= 1, got -5"),
    ("rms_norm_eps", 0, "rms_norm_eps must be in (0.0, inf), got 0"),
    ("rope_theta", math.nan, "rope_theta must be a finite number, got nan"),
    ("rope_theta", "1e6", "rope_theta must be a finite number, got '1e6'"),
    ("attention_dropout", 1.5, "attention_dropout must be in [0.0, 1.0), got 1.5"),
    ("initializer_range", math.inf, "initializer_range must be a finite number, got inf"),
    ("tie_word_embeddings", "false", "tie_word_embeddings must be true or false, got 'false'"),
    ("hidden_act", "gelu", "hidden_act 'gelu' is not supported"),
    # relations
    ("num_attention_heads", 3, "hidden_size 64 is not a multiple of num_attention_heads 3"),
    ("num_key_value_heads", 3, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    ("eol_token_id", 731, "eol_token_id 731 is outside the vocabulary (vocab_size 731)"),
    ("bos_token_id", -1, "bos_token_id must be >= 0, got -1"),
    ("eof_token_id", 700, "eof_token_id 700 is a visual token id (visual tokens are [667, 731))"),
    ("first_visual_token_id", 600, "bos_token_id 662 is a visual token id (visual tokens are [600, 731))"),
    ("num_visual_tokens", 100, "visual tokens [667, 767) (first_visual_token_id, num_visual_tokens) "
                               "do not fit vocab_size 731"),
    ("rope_scaling", {"type": "linear", "factor": math.inf}, "rope_scaling factor must be a number > 1 (finite), got inf"),
    ("rope_scaling", [2.0], "rope_scaling must be a dict or None"),
])
def test_a_wrong_field_is_named_with_its_file(tmp_path, field, value, message):
    """API: Emu3LMConfig.from_json_file."""
    path = write_config(tmp_path, {**TINY.to_dict("original"), field: value})
    with pytest.raises(ValueError) as err:
        Emu3LMConfig.from_json_file(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_a_wrong_field_of_an_hf_text_config_is_named_with_its_file(tmp_path):
    path = write_config(tmp_path, {"text_config": {**TINY.to_dict("hf"), "num_key_value_heads": "2"}})
    with pytest.raises(ValueError, match="num_key_value_heads must be an integer, got '2'") as err:
        Emu3LMConfig.from_json_file(path)
    assert path in str(err.value)


@pytest.mark.parametrize("content, message", [
    ([1, 2, 3], "config must be a JSON object (a dict), got list"),
    ({"text_config": [1]}, "text_config must be a JSON object (a dict), got list"),
    ({"vocabulary_map": "x"}, "vocabulary_map must be a JSON object (a dict), got str"),
    ({**TINY.to_dict("original"), "eos_token_id": []}, "eos_token_id is an empty list"),
    ({**TINY.to_dict("original"), "pad_token_id": "456"}, "pad_token_id must be an integer, got '456'"),
])
def test_a_wrong_structure_is_named_with_its_file(tmp_path, content, message):
    path = write_config(tmp_path, content)
    with pytest.raises(ValueError) as err:
        Emu3LMConfig.from_json_file(path)
    assert str(err.value) == f"{path}: {message}"


def test_unreadable_files_are_named(tmp_path):
    bad_json = tmp_path / "a" / "config.json"
    bad_json.parent.mkdir()
    bad_json.write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{bad_json}: not valid JSON"):
        Emu3LMConfig.from_json_file(bad_json)
    binary = tmp_path / "b.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match=f"{binary}: not UTF-8 text"):
        Emu3LMConfig.from_json_file(binary)


def test_constructor_and_presets_check_the_same_rules():
    """API: the dataclass itself and from_name(**overrides), without a file."""
    with pytest.raises(ValueError, match="^hidden_size must be an integer, got '64'$"):
        Emu3LMConfig.from_name("tiny", hidden_size="64")
    with pytest.raises(ValueError, match="num_hidden_layers must be an integer, got None"):
        Emu3LMConfig(**{**TINY.__dict__, "num_hidden_layers": None})
    # values are normalised: numpy-free ints and floats, and a valid config is unchanged by a round trip
    cfg = Emu3LMConfig.from_name("tiny", rms_norm_eps=1, attention_dropout=0)
    assert isinstance(cfg.rms_norm_eps, float) and isinstance(cfg.attention_dropout, float)
    assert Emu3LMConfig.from_dict(cfg.to_dict("original")) == cfg


def test_token_ids_a_config_does_not_give_follow_the_numbering_rule():
    """A config.json without the image ids (an -hf text_config) takes all of them from Emu3's
    numbering rule counted from pad_token_id, so a small vocabulary is not given the released ids."""
    cfg = Emu3LMConfig.from_dict({"text_config": TINY.to_dict("hf")})
    assert VisualIds.from_config(cfg) == VisualIds.from_config(TINY)
    cfg = Emu3LMConfig.from_dict({"pad_token_id": 456, "vocab_size": 731})
    assert (cfg.eol_token_id, cfg.bos_token_id, cfg.first_visual_token_id) == (659, 662, 667)


def test_from_pretrained_names_the_config_file_before_reading_weights(tmp_path):
    """API: Emu3ForCausalLM.from_pretrained of a checkpoint whose config.json is wrong."""
    directory = tmp_path / "ckpt"
    Emu3ForCausalLM(TINY, dtype=ms.float32).save_pretrained(directory)
    config_file = directory / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "hidden_size": "64"}))
    with pytest.raises(ValueError, match=f"^{config_file}: hidden_size must be an integer, got '64'$"):
        Emu3ForCausalLM.from_pretrained(directory)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_shard_bytes": 0}, "max_shard_bytes must be a positive number of bytes or None, got 0"),
    ({"max_shard_bytes": -1}, "max_shard_bytes must be a positive number of bytes or None, got -1"),
    ({"max_shard_bytes": 1.5}, "max_shard_bytes must be a positive number of bytes or None, got 1.5"),
    ({"dtype": "int8"}, "unknown dtype 'int8'"),
    ({"dtype": ms.int8}, "unsupported dtype mindspore.int8"),
    ({"layout": "gguf"}, "layout must be one of"),
])
def test_a_refused_save_creates_nothing(tmp_path, kwargs, message):
    """API: Emu3ForCausalLM.save_pretrained checks every argument before creating the directory."""
    model = Emu3ForCausalLM(TINY, dtype=ms.float32, init_weights=False)
    target = tmp_path / "out" / "ckpt"
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        model.save_pretrained(target, **kwargs)
    assert list(tmp_path.iterdir()) == []
