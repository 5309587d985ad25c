"""Configuration of the Emu3 causal language model (a Llama-style decoder).

Field names follow the original BAAI/Emu3-Gen config.json (`emu3/mllm/configuration_emu3.py`);
`from_dict` also reads the `-hf` layout, where the LM sits under `text_config` and transformers
5.x keeps RoPE settings in `rope_parameters` ({"rope_theta", "rope_type", "factor"}).
Token-id defaults are the released tokenizer's, by the numbering rule of `emu3_lm.blocks`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass

from .blocks import RELEASED, emu3_token_ids

ROPE_SCALING_TYPES = ("linear", "dynamic")
ATTN_IMPLEMENTATIONS = ("matmul", "flash")


@dataclass
class Emu3LMConfig:
    vocab_size: int = RELEASED["vocab_size"]  # text BPE + special tokens + 32768 visual tokens
    hidden_size: int = 4096  # width of the residual stream
    intermediate_size: int = 14336  # width of the SwiGLU MLP
    num_hidden_layers: int = 32  # decoder layers
    num_attention_heads: int = 32  # query heads; head_dim = hidden_size // num_attention_heads
    num_key_value_heads: int = 8  # key/value heads (grouped-query attention)
    max_position_embeddings: int = 9216  # context the model was trained for; dynamic RoPE scales past it
    rms_norm_eps: float = 1e-5  # RMSNorm epsilon (the norm is computed in fp32)
    rope_theta: float = 1_000_000.0  # RoPE base period
    rope_scaling: dict | None = None  # None, or {"type": "linear"|"dynamic", "factor": float > 1}
    attention_dropout: float = 0.1  # dropout of attention weights, embeddings, residual branches (training)
    hidden_act: str = "silu"  # MLP activation; Emu3 uses SiLU (SwiGLU), the only one supported
    initializer_range: float = 0.02  # std of the normal init of fresh (untrained) weights
    tie_word_embeddings: bool = False  # Emu3 keeps lm_head apart from the embedding; tying is not supported
    pad_token_id: int = RELEASED["pad_token_id"]  # <|endoftext|>
    bos_token_id: int = RELEASED["bos_token_id"]  # <|extra_203|>
    eos_token_id: int = RELEASED["eos_token_id"]  # <|extra_204|>
    img_token_id: int = RELEASED["img_token_id"]  # <|image token|>, precedes the rows of visual tokens
    boi_token_id: int = RELEASED["boi_token_id"]  # <|image start|>
    eoi_token_id: int = RELEASED["eoi_token_id"]  # <|image end|>
    eol_token_id: int = RELEASED["eol_token_id"]  # <|extra_200|>, ends each row of visual tokens
    eof_token_id: int = RELEASED["eof_token_id"]  # <|extra_201|>, ends an image (frame)
    image_area: int = 720 * 720  # pixel area of generated images (the training resolution)
    # Not in the original config.json (the tokenizer defines them): where the visual tokens sit.
    first_visual_token_id: int = RELEASED["first_visual_token_id"]  # <|visual token 000000|>; code k is this + k
    num_visual_tokens: int = RELEASED["num_visual_tokens"]  # VQ codebook size
    # Ours: attention kernel; None picks by device (emu3_lm.attention.default_implementation()).
    attn_implementation: str | None = None

    def __post_init__(self):
        """Every rule of the config, in one place: types and ranges of each field, then the
        relations between fields. A wrong value fails here, with the field's name, instead of
        deep inside MindSpore (`"hidden_size": "64"` would otherwise surface as a shape error)."""
        for name, low in _INTS.items():
            setattr(self, name, _integer(name, getattr(self, name), low))
        for name in _TOKEN_IDS:
            setattr(self, name, _integer(name, getattr(self, name), 0))
        for name, (low, high, low_allowed) in _FLOATS.items():
            setattr(self, name, _real(name, getattr(self, name), low, high, low_allowed))
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported (Emu3 uses 'silu')")
        if not isinstance(self.tie_word_embeddings, bool):
            raise ValueError(f"tie_word_embeddings must be true or false, got {self.tie_word_embeddings!r}")
        if self.tie_word_embeddings:
            raise ValueError("tie_word_embeddings=True is not supported: Emu3 has a separate lm_head")
        if self.attn_implementation is not None and self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be None or one of {ATTN_IMPLEMENTATIONS}, "
                             f"got {self.attn_implementation!r}")
        self.rope_scaling = _normalise_rope_scaling(self.rope_scaling)
        # relations
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} (hidden_size / num_attention_heads) must be even "
                             f"for RoPE")
        start, stop = self.visual_token_range
        if stop > self.vocab_size:
            raise ValueError(f"visual tokens [{start}, {stop}) (first_visual_token_id, num_visual_tokens) "
                             f"do not fit vocab_size {self.vocab_size}")
        for name in _TOKEN_IDS:
            value = getattr(self, name)
            if value >= self.vocab_size:
                raise ValueError(f"{name} {value} is outside the vocabulary (vocab_size {self.vocab_size})")
            if start <= value < stop:
                raise ValueError(f"{name} {value} is a visual token id (visual tokens are [{start}, {stop}))")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def visual_token_range(self) -> tuple[int, int]:
        """[start, stop) of the visual token ids (the lm_head rows image generation samples from)."""
        return self.first_visual_token_id, self.first_visual_token_id + self.num_visual_tokens

    def num_parameters(self) -> int:
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        kv = self.num_key_value_heads * self.head_dim
        layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
        return self.num_hidden_layers * layer + 2 * v * h + h

    # ---- presets -------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides) -> Emu3LMConfig:
        """A named preset ('emu3-gen', 'emu3-chat', 'emu3-stage1', 'bench-1b', 'tiny'), optionally changed."""
        if name not in PRESETS:
            raise KeyError(f"unknown Emu3LMConfig preset {name!r}; known: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    # ---- config.json ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> Emu3LMConfig:
        """Read the original config.json (BAAI/Emu3-Gen), an -hf one (`text_config`), or a text_config alone.

        Unknown keys are ignored. RoPE: `rope_theta` / `rope_scaling` (original and transformers 4.x)
        or `rope_parameters` (transformers 5.x); rope_type 'default' means no scaling. Token ids the
        dict does not give (an -hf text_config has no image ids; null counts as not given) come from
        its `vocabulary_map`, else from Emu3's numbering rule counted from pad_token_id
        (emu3_lm.blocks). A value of the wrong type or range raises ValueError naming the field.
        """
        d = _mapping(d, "config")
        vocabulary_map = _mapping(d.get("vocabulary_map") or {}, "vocabulary_map")
        if "text_config" in d:
            d = _mapping(d["text_config"] or {}, "text_config")
        names = {f.name for f in dataclasses.fields(cls)} - {"rope_scaling", "attn_implementation"}
        kwargs = {k: v for k, v in d.items() if k in names}
        if isinstance(kwargs.get("eos_token_id"), list):  # transformers allows several
            if not kwargs["eos_token_id"]:
                raise ValueError("eos_token_id is an empty list")
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        if kwargs.get("num_key_value_heads") is None:
            kwargs.pop("num_key_value_heads", None)
            if "num_attention_heads" in d:
                kwargs["num_key_value_heads"] = d["num_attention_heads"]
        scaling = d.get("rope_scaling")
        params = d.get("rope_parameters")
        if isinstance(params, dict):
            if "rope_theta" in params:
                kwargs["rope_theta"] = params["rope_theta"]
            if scaling is None:
                scaling = params
        kwargs["rope_scaling"] = scaling
        for name in _TOKEN_IDS:  # transformers writes null for an id it leaves unset
            if name in kwargs and kwargs[name] is None:
                del kwargs[name]
        for token, field in _VOCAB_TOKENS.items():
            if token in vocabulary_map and field not in kwargs:
                kwargs[field] = vocabulary_map[token]
        # what config.json does not say, Emu3's numbering rule (emu3_lm.blocks) counts from <|endoftext|>
        pad = _integer("pad_token_id", kwargs.get("pad_token_id", cls.pad_token_id), 0)
        vocab = _integer("vocab_size", kwargs.get("vocab_size", cls.vocab_size), 1)
        rule = emu3_token_ids(pad, 0)
        for name in (*_TOKEN_IDS, "first_visual_token_id"):
            kwargs.setdefault(name, min(rule[name], vocab) if name == "first_visual_token_id" else rule[name])
        if "num_visual_tokens" not in kwargs:
            first = _integer("first_visual_token_id", kwargs["first_visual_token_id"], 0)
            kwargs["num_visual_tokens"] = max(vocab - first, 0)
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, path, *, revision=None, cache_dir=None, local_files_only: bool = False) -> Emu3LMConfig:
        """The config.json of a checkpoint directory or hub repo id (that file only; see emu3_vq.hub)."""
        from emu3_vq import hub

        directory = hub.resolve(path, ["config.json"], revision=revision, cache_dir=cache_dir,
                                local_files_only=local_files_only)
        return cls.from_json_file(directory / "config.json")

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> Emu3LMConfig:
        """`from_dict` of a config.json; every error names the file."""
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        try:
            return cls.from_dict(d)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def to_dict(self, layout: str = "original") -> dict:
        """config.json content: 'original' (BAAI/Emu3-Gen) or 'hf' (an -hf `text_config`)."""
        d = dataclasses.asdict(self)
        d.pop("attn_implementation")
        d.pop("first_visual_token_id")
        d.pop("num_visual_tokens")
        if layout == "original":
            d.update(model_type="Emu3", architectures=["Emu3ForCausalLM"], pretraining_tp=1, use_cache=True)
            return d
        if layout == "hf":
            for key in ("img_token_id", "boi_token_id", "eoi_token_id", "eol_token_id", "eof_token_id",
                        "image_area", "rope_theta", "rope_scaling"):
                d.pop(key)
            rope = {"rope_theta": self.rope_theta, "rope_type": "default"}
            if self.rope_scaling is not None:
                rope.update(rope_type=self.rope_scaling["type"], factor=self.rope_scaling["factor"])
            d.update(model_type="emu3_text_model", rope_parameters=rope, use_cache=True)
            return d
        raise ValueError(f"layout must be 'original' or 'hf', got {layout!r}")


def _normalise_rope_scaling(scaling) -> dict | None:
    """None or {"type": "linear"|"dynamic", "factor": float}; accepts 'rope_type' and 'default'."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise ValueError(f"rope_scaling must be a dict or None, got {scaling!r}")
    kind = scaling.get("type", scaling.get("rope_type"))
    if kind in (None, "default") and "factor" not in scaling:
        return None
    if kind not in ROPE_SCALING_TYPES:
        raise ValueError(f"rope_scaling type must be one of {ROPE_SCALING_TYPES}, got {kind!r} in {scaling}")
    factor = scaling.get("factor")
    if not _is_real(factor) or not factor > 1:
        raise ValueError(f"rope_scaling factor must be a number > 1 (finite), got {factor!r}")
    return {"type": kind, "factor": float(factor)}


# ---- the rules of each field ----------------------------------------------------------------------

# integer fields -> smallest allowed value
_INTS = {
    "vocab_size": 1, "hidden_size": 1, "intermediate_size": 1, "num_hidden_layers": 1,
    "num_attention_heads": 1, "num_key_value_heads": 1, "max_position_embeddings": 1, "image_area": 1,
    "first_visual_token_id": 0, "num_visual_tokens": 0,
}
# special token ids: integers in [0, vocab_size), none of them a visual token
_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "img_token_id", "boi_token_id",
              "eoi_token_id", "eol_token_id", "eof_token_id")
# float fields -> (low, high or None, whether low itself is allowed); high is excluded, NaN and inf never pass
_FLOATS = {
    "rms_norm_eps": (0.0, None, False),
    "rope_theta": (0.0, None, False),
    "attention_dropout": (0.0, 1.0, True),
    "initializer_range": (0.0, None, True),
}


def _mapping(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object (a dict), got {type(value).__name__}")
    return value


def _is_real(value) -> bool:
    """A finite int or float, not a bool (JSON's true is not a number here)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def _integer(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _real(name: str, value, low: float, high: float | None, low_allowed: bool) -> float:
    if not _is_real(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (value == low and not low_allowed) or (high is not None and value >= high):
        bounds = f"{'[' if low_allowed else '('}{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{name} must be in {bounds}, got {value}")
    return float(value)


# token string in an -hf vocabulary_map -> config field
_VOCAB_TOKENS = {
    "<|image token|>": "img_token_id",
    "<|image start|>": "boi_token_id",
    "<|image end|>": "eoi_token_id",
    "<|extra_200|>": "eol_token_id",
    "<|extra_201|>": "eof_token_id",
    "<|visual token 000000|>": "first_visual_token_id",
}


PRESETS: dict[str, dict] = {
    # BAAI/Emu3-Gen, -Chat and -Stage1: one architecture, the dataclass defaults
    "emu3-gen": {},
    "emu3-chat": {},
    "emu3-stage1": {},
    # benchmark stand-in (docs/benchmarks.md): real vocabulary, 468 M parameters
    "bench-1b": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=8,
                     num_key_value_heads=2),
    # unit tests and the demo model: the ids of the tiny tokenizer of emu3_lm.tiny_assets (456 ordinary
    # tokens, 64 visual tokens = the emu3_vq 'tiny' codebook), vocab 731
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024, image_area=64 * 64,
                 **emu3_token_ids(456, 64)),
}
