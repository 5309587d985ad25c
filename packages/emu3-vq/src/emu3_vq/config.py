"""Configuration of the Emu3 vision tokenizer (VQ-VAE with temporal 3D convolutions).

Field names follow the original BAAI/Emu3-VisionTokenizer config.json; the `-hf` layout
(`vq_config` inside an Emu3 config.json) uses other names, mapped in `_HF_NAMES`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass


@dataclass
class Emu3VQConfig:
    codebook_size: int = 32768  # number of codes; a code k is LM token (first visual id + k)
    embed_dim: int = 4  # width of one codebook vector
    z_channels: int = 4  # channels leaving the encoder / entering the decoder
    double_z: bool = False  # encoder emits 2*z_channels (unused by Emu3, kept for fidelity)
    in_channels: int = 3  # image channels in
    out_channels: int = 3  # image channels out
    temporal_downsample_factor: int = 4  # frames per latent frame; images are repeated this often
    ch: int = 256  # base channel count of the 2D stages
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)  # per-stage multiplier; spatial factor 2**(len-1)
    num_res_blocks: int = 2  # ResNet blocks per encoder stage (decoder uses one more)
    attn_resolutions: tuple[int, ...] = (3,)  # stage indices that carry attention blocks
    dropout: float = 0.0  # dropout inside ResNet blocks (training only)

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(a) for a in self.attn_resolutions)
        t = self.temporal_downsample_factor
        if t < 1 or t & (t - 1):
            raise ValueError(f"temporal_downsample_factor must be a power of two, got {t}")
        if not self.ch_mult:
            raise ValueError("ch_mult must name at least one stage")
        if self.ch % 32:
            raise ValueError(f"ch must be a multiple of 32 (GroupNorm uses 32 groups), got {self.ch}")

    @property
    def spatial_factor(self) -> int:
        """Pixels per code along each side (8 for the released model)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def num_time_convs(self) -> int:
        """Temporal down/upsampling layers: log2(temporal_downsample_factor)."""
        return self.temporal_downsample_factor.bit_length() - 1

    # ---- presets -------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str) -> "Emu3VQConfig":
        if name not in PRESETS:
            raise KeyError(f"unknown Emu3VQConfig preset {name!r}; known: {sorted(PRESETS)}")
        return cls(**PRESETS[name])

    # ---- config.json ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> "Emu3VQConfig":
        """Read the original layout, the `-hf` vq_config layout, or a whole `-hf` config.json."""
        if "vq_config" in d:
            d = d["vq_config"]
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in d.items():
            key = _HF_NAMES.get(key, key)
            if key in names:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "Emu3VQConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self, layout: str = "original") -> dict:
        """config.json content: `original` (BAAI/Emu3-VisionTokenizer) or `hf` (a vq_config)."""
        d = dataclasses.asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        if layout == "original":
            d["model_type"] = "Emu3VisionVQ"
            d["architectures"] = ["Emu3VisionVQModel"]
            return d
        if layout == "hf":
            inverse = {v: k for k, v in _HF_NAMES.items()}
            out = {inverse.get(k, k): v for k, v in d.items() if k != "dropout"}
            out["attention_dropout"] = self.dropout
            out["model_type"] = "emu3_vqgan"
            return out
        raise ValueError(f"layout must be 'original' or 'hf', got {layout!r}")


# -hf vq_config name -> original name
_HF_NAMES = {
    "latent_channels": "z_channels",
    "double_latent": "double_z",
    "base_channels": "ch",
    "channel_multiplier": "ch_mult",
}

PRESETS: dict[str, dict] = {
    # BAAI/Emu3-VisionTokenizer
    "emu3-visiontokenizer": {},
    # small enough for unit tests; same depth and every kind of layer as the real one
    "tiny": dict(codebook_size=64, ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1),
    # smallest: two stages (factor 2), for CLI and fast tests
    "micro": dict(codebook_size=32, ch=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(1,)),
}
