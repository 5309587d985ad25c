"""Configuration of the Emu3 vision tokenizer (VQ-VAE with temporal 3D convolutions).

Field names follow the original BAAI/Emu3-VisionTokenizer config.json; the `-hf` layout
(`vq_config` inside an Emu3 config.json) uses other names, mapped in `_HF_NAMES`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path


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
        """Every rule on the fields, in one place: types, ranges and relations. A wrong value
        fails here, naming the field, rather than as a MindSpore error deep in the model."""
        for name in ("codebook_size", "embed_dim", "z_channels", "in_channels", "out_channels",
                     "temporal_downsample_factor", "ch", "num_res_blocks"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f'"{name}" must be a positive integer, got {getattr(self, name)!r}')
        if not isinstance(self.double_z, bool):
            raise ValueError(f'"double_z" must be true or false, got {self.double_z!r}')
        self.ch_mult = _int_list("ch_mult", self.ch_mult)
        self.attn_resolutions = _int_list("attn_resolutions", self.attn_resolutions)
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError(f'"ch_mult" must list at least one positive multiplier, '
                             f"got {list(self.ch_mult)}")
        levels = len(self.ch_mult)
        if any(not 0 <= a < levels for a in self.attn_resolutions):
            raise ValueError(f'"attn_resolutions" must be stage indices below len(ch_mult) = {levels}, '
                             f"got {list(self.attn_resolutions)}")
        t = self.temporal_downsample_factor
        if t & (t - 1):
            raise ValueError(f'"temporal_downsample_factor" must be a power of two, got {t}')
        if self.ch % 32:
            raise ValueError(f'"ch" must be a multiple of 32 (GroupNorm uses 32 groups), got {self.ch}')
        if (isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float))
                or not 0 <= self.dropout < 1):
            raise ValueError(f'"dropout" must be a number in [0, 1), got {self.dropout!r}')

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
        """Read the original layout, the `-hf` vq_config layout, or a whole `-hf` config.json.

        Keys that are not fields (model_type, architectures, ...) are ignored."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {_json_type(d)}")
        if "vq_config" in d:
            d = d["vq_config"]
            if not isinstance(d, dict):
                raise ValueError(f'"vq_config" must be a JSON object, got {_json_type(d)}')
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in d.items():
            key = _HF_NAMES.get(key, key)
            if key in names:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, path, *, revision=None, cache_dir=None, local_files_only: bool = False) -> "Emu3VQConfig":
        """The config.json of a checkpoint directory or hub repo id (that file only; see emu3_vq.hub)."""
        from . import hub

        directory = hub.resolve(path, ["config.json"], revision=revision, cache_dir=cache_dir,
                                local_files_only=local_files_only)
        return cls.from_json_file(directory / "config.json")

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "Emu3VQConfig":
        """Read and check a config.json; every error names the file (and the field)."""
        try:
            return cls.from_dict(read_json(path))
        except ValueError as exc:
            message = str(exc)
            raise ValueError(message if message.startswith(str(path)) else f"{path}: {message}") from None

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


def read_json(path: str | os.PathLike) -> dict:
    """A JSON file's object; FileNotFoundError or ValueError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON file ({exc})") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {_json_type(d)}")
    return d


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_list(name: str, value) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(_is_int(v) for v in value):
        raise ValueError(f'"{name}" must be a list of integers, got {value!r}')
    return tuple(value)


def _json_type(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


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
    # the shapes model (emu3 train vq on tools/shapes data): 32x32 images -> 8x8 codes
    "shapes": dict(codebook_size=512, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=()),
    # smallest: two stages (factor 2), for CLI and fast tests
    "micro": dict(codebook_size=32, ch=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(1,)),
}
