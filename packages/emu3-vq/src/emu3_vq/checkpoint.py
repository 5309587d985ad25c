"""Checkpoint layouts of the vision tokenizer: key tables, loading and saving.

Two layouts, both read from a directory holding config.json and safetensors (one
`model.safetensors` or shards with `model.safetensors.index.json`): a local directory, or the
cached snapshot of a hub repo id (emu3_vq.hub; only config.json and the shards holding VQ keys
are fetched):

- original (BAAI/Emu3-VisionTokenizer): keys are the model's own parameter names,
  `encoder.down.0.block.0.norm1.weight`, `decoder.up.3.attn.0.q.weight` [C, C, 1, 1], ...
- hf (transformers' `Emu3VQVAE`): the same tensors renamed by `ORIGINAL_TO_HF`, attention
  projections squeezed to [C, C] (Linear layers). Either a standalone `Emu3VQVAE` directory
  (config.json is the vq config, keys bare: `encoder.down_block.down.0...`) or a combined
  Emu3 checkpoint (config.json with `vq_config`; VQ keys under `vqmodel.` or
  `model.vqmodel.`; everything else, `text_model.*`, `lm_head.*`, is ignored).

Loading is strict: missing keys, unexpected keys and shape mismatches raise a
`CheckpointError` (a ValueError) that names them in the checkpoint's own spelling.
`save_pretrained(layout="hf")` writes the standalone `Emu3VQVAE` form, which
`transformers.Emu3VQVAE.from_pretrained` loads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from emu3_vq import weights
from emu3_vq.config import Emu3VQConfig, read_json
from emu3_vq.device import dtype_name
from emu3_vq.weights import CheckpointError

# Original name -> -hf name: (pattern, replacement) applied in this order to every key, as
# transformers' convert_emu3_weights_to_hf.py does.
ORIGINAL_TO_HF = [
    # attention projections: 1x1 convs become Linear layers (weights squeezed, see below)
    (r"\.q\.", ".q_proj."),
    (r"\.k\.", ".k_proj."),
    (r"\.v\.", ".v_proj."),
    (r"\.proj_out\.", ".out_proj."),
    # attention norms move out of the attention blocks
    (r"mid\.attn_1\.norm\.", "mid.attn_norm."),
    (r"attn\.(\d+)\.norm\.", r"attn_norms.\1."),
    # down / mid / up become blocks of their own
    (r"\.down\.", ".down_block.down."),
    (r"\.up\.", ".up_block.up."),
    (r"\.mid\.", ".middle_block."),
]

# -hf name -> original name: the inverse rules, in reverse order.
HF_TO_ORIGINAL = [
    (r"\.middle_block\.", ".mid."),
    (r"\.up_block\.up\.", ".up."),
    (r"\.down_block\.down\.", ".down."),
    (r"attn_norms\.(\d+)\.", r"attn.\1.norm."),
    (r"mid\.attn_norm\.", "mid.attn_1.norm."),
    (r"\.out_proj\.", ".proj_out."),
    (r"\.v_proj\.", ".v."),
    (r"\.k_proj\.", ".k."),
    (r"\.q_proj\.", ".q."),
]

# Original keys of the attention projection weights: [C, C, 1, 1] here, [C, C] in -hf.
_ATTN_PROJ_WEIGHT = re.compile(r"\.attn(_1|\.\d+)\.(q|k|v|proj_out)\.weight$")

# Where the VQ lives inside a combined Emu3 -hf checkpoint (the hub files, then what current
# transformers writes after its load-time renames).
HF_VQ_PREFIXES = ("vqmodel.", "model.vqmodel.")

# dtype spelling -> safetensors dtype name of the file
_FILE_DTYPES = {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}

# Names that only exist in the -hf spelling.
_HF_MARKERS = re.compile(r"(^|\.)(down_block|up_block|middle_block)\.")


def _apply(rules, name: str) -> str:
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    return name


def original_to_hf(name: str) -> str:
    """`decoder.up.3.attn.0.q.weight` -> `decoder.up_block.up.3.attn.0.q_proj.weight`."""
    return _apply(ORIGINAL_TO_HF, name)


def hf_to_original(name: str) -> str:
    """`encoder.middle_block.attn_norm.weight` -> `encoder.mid.attn_1.norm.weight`."""
    return _apply(HF_TO_ORIGINAL, name)


def is_attn_proj_weight(original_name: str) -> bool:
    return _ATTN_PROJ_WEIGHT.search(original_name) is not None


def state_to_hf(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Original-named arrays -> -hf-named arrays (attention projections squeezed to 2-D)."""
    out = {}
    for name, arr in state.items():
        if is_attn_proj_weight(name):
            arr = arr.reshape(arr.shape[0], arr.shape[1])
        out[original_to_hf(name)] = arr
    return out


def state_to_original(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """-hf-named arrays -> original-named arrays (attention projections as [C, C, 1, 1])."""
    out = {}
    for name, arr in state.items():
        orig = hf_to_original(name)
        if is_attn_proj_weight(orig):
            arr = arr.reshape(arr.shape[0], arr.shape[1], 1, 1)
        out[orig] = arr
    return out


# ---- reading ----------------------------------------------------------------------------

def _read_config(directory: Path) -> dict:
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {directory}")
    return read_json(path)


def _select_vq_keys(directory: Path, config: dict, keys: dict) -> tuple[str, list[str]]:
    """(prefix to strip, checkpoint keys of the VQ)."""
    if "vq_config" in config:  # a combined Emu3 -hf checkpoint: take the VQ, ignore the rest
        for prefix in HF_VQ_PREFIXES:
            names = [k for k in keys if k.startswith(prefix)]
            if names:
                return prefix, names
        raise CheckpointError(f"{directory}: an Emu3 checkpoint without vision tokenizer weights "
                              f"(no key starts with {' or '.join(HF_VQ_PREFIXES)})")
    names = list(keys)
    for prefix in HF_VQ_PREFIXES:  # a standalone VQ saved with its prefix
        if names and all(k.startswith(prefix) for k in names):
            return prefix, names
    return "", names


def detect_layout(names) -> str:
    """'hf' when any (prefix-stripped) key has an -hf-only name, else 'original'."""
    return "hf" if any(_HF_MARKERS.search(n) for n in names) else "original"


def _vq_key(key: str) -> bool:
    """Whether a checkpoint key can belong to a vision tokenizer (not to a combined -hf LM)."""
    return key.startswith(HF_VQ_PREFIXES) or not key.startswith(("text_model.", "model.", "lm_head."))


def from_pretrained(cls, path, dtype=None, *, revision=None, cache_dir=None, local_files_only=False, **kwargs):
    """Build `cls(config, dtype=dtype, **kwargs)` from a checkpoint directory or hub repo id
    (`revision`, `cache_dir`, `local_files_only`: see emu3_vq.hub) and load its weights strictly
    (see the module docstring for the layouts accepted)."""
    from . import hub

    directory = hub.resolve_weights(path, _vq_key, revision=revision, cache_dir=cache_dir,
                                    local_files_only=local_files_only)
    raw_config = _read_config(directory)
    try:
        config = Emu3VQConfig.from_dict(raw_config)
    except ValueError as exc:
        raise ValueError(f"{directory / 'config.json'}: {exc}") from None
    keys = weights.checkpoint_keys(directory)
    prefix, names = _select_vq_keys(directory, raw_config, keys)
    stripped = [n[len(prefix):] for n in names]
    layout = detect_layout(stripped)
    model = cls(config, dtype=dtype, **kwargs)
    params = {n: tuple(p.shape) for n, p in model.parameters_and_names()}

    # checkpoint key -> (parameter name, shape the parameter needs from the file)
    plan: dict[str, tuple[str, tuple[int, ...]]] = {}
    unexpected = []
    for key, short in zip(names, stripped):
        target = hf_to_original(short) if layout == "hf" else short
        if target not in params:
            unexpected.append(key)
            continue
        shape = params[target]
        if layout == "hf" and is_attn_proj_weight(target):
            shape = shape[:2]
        plan[key] = (target, shape)
    loaded = {t for t, _ in plan.values()}
    missing = [_checkpoint_name(n, layout, prefix) for n in params if n not in loaded]
    mismatched = [f"{k} (checkpoint {list(keys[k][1])} vs model {list(s)})"
                  for k, (_, s) in plan.items() if tuple(keys[k][1]) != s]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_few(sorted(missing))}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_few(sorted(unexpected))}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_few(sorted(mismatched))}")
    if problems:
        raise CheckpointError(f"{directory} ({layout} layout) does not match the vision tokenizer "
                              f"built from its config.json: " + "; ".join(problems))

    def arrays():
        for key, arr in weights.iter_checkpoint(directory, names=plan):
            target, _ = plan[key]
            yield target, arr.reshape(params[target])

    weights.load_into(model, arrays(), what=f"{directory}", expected_names=params)
    return model


def _checkpoint_name(param_name: str, layout: str, prefix: str) -> str:
    return prefix + (original_to_hf(param_name) if layout == "hf" else param_name)


def _few(names, n: int = 10) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


# ---- writing ----------------------------------------------------------------------------

def hf_config_dict(config: Emu3VQConfig) -> dict:
    """config.json of a standalone transformers `Emu3VQVAE`."""
    d = config.to_dict("hf")
    # transformers' attention blocks are sized by hidden_size (the deepest stage's width)
    d["hidden_size"] = config.ch * config.ch_mult[-1]
    d["num_attention_heads"] = 1
    d["architectures"] = ["Emu3VQVAE"]
    return d


def save_pretrained(model, directory, layout: str = "original", max_shard_bytes: int | None = None,
                    dtype=None) -> None:
    """Write config.json and the weights of `model` to `directory`.

    layout: 'original' (BAAI/Emu3-VisionTokenizer keys) or 'hf' (standalone transformers
    Emu3VQVAE). max_shard_bytes: shard into `model-0000X-of-0000Y.safetensors` + index.
    dtype: "fp32" | "fp16" | "bf16" or a MindSpore dtype for the floating tensors (None: fp32).
    The weights are committed as a whole (`weights.write_checkpoint`), then config.json is
    replaced; a save interrupted between the two leaves the new weights beside the old
    config.json, which loads only when both models share one architecture (and then gives the
    new model). Invalid arguments are refused before anything is created.
    """
    if layout not in ("original", "hf"):
        raise ValueError(f"layout must be 'original' or 'hf', got {layout!r}")
    file_dtype = None if dtype is None else _FILE_DTYPES[dtype_name(dtype)]
    directory = Path(directory)
    state = weights.state_dict_numpy(model)
    if layout == "hf":
        state = state_to_hf(state)
        config = hf_config_dict(model.config)
    else:
        config = model.config.to_dict("original")
    weights.write_checkpoint(directory, state, max_shard_bytes=max_shard_bytes, dtype=file_dtype)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    weights.atomic_write(directory / "config.json", lambda f: f.write(text.encode("utf-8")))
