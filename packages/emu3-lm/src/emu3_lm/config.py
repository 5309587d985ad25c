"""Configuration of the Emu3 causal language model (a Llama-style decoder).

Field names follow the original BAAI/Emu3-Gen config.json (`emu3/mllm/configuration_emu3.py`);
`from_dict` also reads the `-hf` layout, where the LM sits under `text_config` and transformers
5.x keeps RoPE settings in `rope_parameters` ({"rope_theta", "rope_type", "factor"}).
Token-id defaults are the released tokenizer's, by the numbering rule of `emu3_lm.blocks`.
"""

from __future__ import annotations

import dataclasses
import json
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
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported (Emu3 uses 'silu')")
        if self.tie_word_embeddings:
            raise ValueError("tie_word_embeddings=True is not supported: Emu3 has a separate lm_head")
        if self.attn_implementation is not None and self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be None or one of {ATTN_IMPLEMENTATIONS}, "
                             f"got {self.attn_implementation!r}")
        self.rope_scaling = _normalise_rope_scaling(self.rope_scaling)
        end = self.first_visual_token_id + self.num_visual_tokens
        if self.num_visual_tokens < 0 or self.first_visual_token_id < 0 or end > self.vocab_size:
            raise ValueError(f"visual tokens [{self.first_visual_token_id}, {end}) do not fit "
                             f"vocab_size {self.vocab_size}")

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
        or `rope_parameters` (transformers 5.x); rope_type 'default' means no scaling.
        """
        if not isinstance(d, dict):
            raise ValueError(f"config must be a dict, got {type(d).__name__}")
        vocabulary_map = d.get("vocabulary_map") or {}
        if "text_config" in d:
            d = d["text_config"] or {}
        names = {f.name for f in dataclasses.fields(cls)} - {"rope_scaling", "attn_implementation"}
        kwargs = {k: v for k, v in d.items() if k in names}
        if isinstance(kwargs.get("eos_token_id"), list):  # transformers allows several
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
        for token, field in _VOCAB_TOKENS.items():
            if token in vocabulary_map and field not in kwargs:
                kwargs[field] = int(vocabulary_map[token])
        if "first_visual_token_id" not in kwargs:
            # config.json does not say; Emu3's numbering rule (emu3_lm.blocks) counts from <|endoftext|>
            pad = kwargs.get("pad_token_id", cls.pad_token_id)
            first = emu3_token_ids(pad, 0)["first_visual_token_id"]
            kwargs["first_visual_token_id"] = min(first, kwargs.get("vocab_size", cls.vocab_size))
        if "num_visual_tokens" not in kwargs:
            vocab = kwargs.get("vocab_size", cls.vocab_size)
            kwargs["num_visual_tokens"] = vocab - kwargs["first_visual_token_id"]
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> Emu3LMConfig:
        with open(path, encoding="utf-8") as f:
            try:
                return cls.from_dict(json.load(f))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc})") from None

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
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 1:
        raise ValueError(f"rope_scaling factor must be a number > 1, got {factor!r}")
    return {"type": kind, "factor": float(factor)}


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
    # benchmark stand-in (shared/BENCH.md): real vocabulary, 468 M parameters
    "bench-1b": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=8,
                     num_key_value_heads=2),
    # unit tests and the demo model: the ids of the tiny tokenizer of emu3_lm.tiny_assets (456 ordinary
    # tokens, 64 visual tokens = the emu3_vq 'tiny' codebook), vocab 731
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024, image_area=64 * 64,
                 **emu3_token_ids(456, 64)),
}
