"""Loading and saving Emu3 LM checkpoints (safetensors) in the original and the -hf layouts.

Original (BAAI/Emu3-Gen, -Chat, -Stage1): config.json with the LM fields at the top level;
keys are our parameter names (`model.embed_tokens.weight`, `model.layers.N...`,
`model.norm.weight`, `lm_head.weight`), usually bf16 shards plus model.safetensors.index.json.

-hf (BAAI/Emu3-Gen-hf, Emu3-Chat-hf, and what transformers 5.x `save_pretrained` writes for
Emu3ForConditionalGeneration): config.json with `text_config`; LM keys `text_model.model.*` and
`text_model.lm_head.weight`. transformers' in-memory names `model.text_model.*` and a top-level
`lm_head.weight` are accepted too. The vision tokenizer's keys (`vqmodel.*`) are skipped here.

Either is read from a local directory or a hub repo id (emu3_vq.hub: only config.json and the
shards holding LM keys are fetched, so the LM of a combined -hf repo leaves the VQ's shards).
Loading reads one shard at a time and one tensor at a time into parameters created empty, so
memory peaks at about the model plus one tensor.
"""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path

import mindspore as ms
from emu3_vq import hub
from emu3_vq.device import resolve_dtype
from emu3_vq.weights import CheckpointError, checkpoint_keys, iter_checkpoint, load_into, write_checkpoint

from .config import Emu3LMConfig

LAYOUTS = ("original", "hf")

# -hf checkpoint key prefix -> our parameter name prefix, tried in order
_HF_TO_OURS = (
    ("text_model.model.", "model."),
    ("text_model.lm_head.", "lm_head."),
    ("model.text_model.", "model."),  # transformers 5.x in-memory names
    ("lm_head.", "lm_head."),
)
_VQ_PREFIXES = ("vqmodel.", "model.vqmodel.")

_FILE_DTYPES = {ms.float32: "F32", ms.float16: "F16", ms.bfloat16: "BF16"}


def is_lm_key(key: str) -> bool:
    """Whether a checkpoint key can hold LM weights (from a combined -hf repo only the shards
    holding such keys are fetched)."""
    return not key.startswith(_VQ_PREFIXES)


def detect_layout(keys) -> str:
    """'hf' when any key is under text_model. / model.text_model., else 'original'."""
    return "hf" if any(k.startswith(("text_model.", "model.text_model.")) for k in keys) else "original"


def to_param_name(key: str, layout: str) -> str | None:
    """Our parameter name for a checkpoint key; None for keys this model does not use (vqmodel.*)."""
    if key.startswith(_VQ_PREFIXES):
        return None
    if layout == "original":
        return key
    for old, new in _HF_TO_OURS:
        if key.startswith(old):
            return new + key[len(old):]
    return key  # unknown: reported as unexpected by the strict check


def from_param_name(name: str, layout: str) -> str:
    """The checkpoint key of one of our parameters in `layout`."""
    if layout == "original":
        return name
    if layout == "hf":
        return "text_model." + name  # model.* -> text_model.model.*, lm_head.* -> text_model.lm_head.*
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def load_pretrained(cls, path: str | os.PathLike, dtype=None, *, revision=None, cache_dir=None,
                    local_files_only: bool = False):
    """Build `cls(config)` from a checkpoint directory (either layout) or a hub repo id, strictly.
    `revision`, `cache_dir`, `local_files_only`: see emu3_vq.hub."""
    directory = hub.resolve_weights(path, is_lm_key, revision=revision, cache_dir=cache_dir,
                                    local_files_only=local_files_only)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{directory}: no config.json")
    config = Emu3LMConfig.from_json_file(config_file)
    keys = checkpoint_keys(directory)
    layout = detect_layout(keys)
    names: dict[str, str] = {}  # checkpoint key -> parameter name
    expected: dict[str, tuple[int, ...]] = {}
    for key, (_, shape) in keys.items():
        name = to_param_name(key, layout)
        if name is None:
            continue
        if name in expected:
            other = next(k for k, n in names.items() if n == name)
            raise CheckpointError(f"{directory}: keys {other!r} and {key!r} both give parameter {name!r}")
        names[key] = name
        expected[name] = shape
    model = cls(config, dtype=resolve_dtype(dtype), init_weights=False)
    arrays = ((names[key], arr) for key, arr in iter_checkpoint(directory, names=list(names), bf16="bits"))
    load_into(model, arrays, what=f"checkpoint {directory} ({layout} layout)", expected_names=expected)
    model.set_train(False)
    return model


def save_pretrained(model, directory: str | os.PathLike, layout: str = "original",
                    max_shard_bytes: int | None = None, dtype=None) -> list[Path]:
    """Write config.json and safetensors (sharded past `max_shard_bytes`) in `layout`.

    dtype: file dtype ('bf16', 'fp16', 'fp32' or a mindspore dtype); default the model's own.
    The 'hf' layout holds the LM part of an -hf checkpoint (text_config, text_model.* keys);
    the vision tokenizer is saved by emu3-vq. Returns the files written.
    """
    return save_arrays(model.config, model.checkpoint_arrays(), directory, layout=layout,
                       max_shard_bytes=max_shard_bytes, dtype=resolve_dtype(dtype) or model.dtype)


def save_arrays(config: Emu3LMConfig, arrays, directory: str | os.PathLike, layout: str = "original",
                max_shard_bytes: int | None = None, dtype=ms.float32) -> list[Path]:
    """`save_pretrained` from (parameter name, array) pairs instead of a model: what a trainer
    writes from weights gathered across processes. dtype: the file dtype, as for save_pretrained.

    Every argument is checked before anything is read or created, so a refused save leaves no
    directory behind."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    file_dtype = resolve_dtype(dtype)
    if file_dtype not in _FILE_DTYPES:
        raise ValueError(f"cannot save dtype {file_dtype}; use fp32, fp16 or bf16")
    shard = max_shard_bytes
    if shard is not None and (isinstance(shard, bool) or not isinstance(shard, numbers.Integral) or shard < 1):
        raise ValueError(f"max_shard_bytes must be a positive number of bytes or None, got {shard!r}")
    directory = Path(directory)
    if hasattr(arrays, "items"):
        arrays = arrays.items()
    tensors = {from_param_name(name, layout): arr for name, arr in arrays}
    files = write_checkpoint(directory, tensors, max_shard_bytes=max_shard_bytes,
                             dtype=_FILE_DTYPES[file_dtype])
    torch_dtype = {ms.float32: "float32", ms.float16: "float16", ms.bfloat16: "bfloat16"}[file_dtype]
    if layout == "original":
        config_dict = {**config.to_dict("original"), "torch_dtype": torch_dtype}
    else:
        config_dict = {"architectures": ["Emu3ForConditionalGeneration"], "model_type": "emu3",
                       "dtype": torch_dtype, "text_config": config.to_dict("hf"),
                       "tie_word_embeddings": False}
    text = json.dumps(config_dict, indent=2, sort_keys=True) + "\n"
    tmp = directory / ".config.json.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, directory / "config.json")
    return [directory / "config.json", *files]
