"""Where a checkpoint's files are: a local directory, or a hub repo id resolved through the
local Hugging Face cache (the one rule for every `from_pretrained` and `--model`/`--vq` flag).

A repo id ("BAAI/Emu3-Gen") is fetched with huggingface_hub's `snapshot_download`, asking only
for the files the caller needs (`allow_patterns`): downloaded when online, read from the cache
when offline (`local_files_only=True` or HF_HUB_OFFLINE=1). Every failure is one line that says
what is missing and how to get it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHT_PATTERNS = ("config.json", "*.safetensors", "*.safetensors.index.json")


def is_repo_id(name) -> bool:
    """Whether `name` has the form of a hub repo id (ORG/NAME) and is not a local path."""
    return isinstance(name, str) and bool(_REPO_ID.match(name)) and not Path(name).exists()


def _how(repo_id: str, patterns) -> str:
    include = " ".join(f"'{p}'" for p in patterns)
    return (f"download it with `hf download {repo_id} --include {include}` (huggingface_hub's CLI), "
            f"or pass a local directory that holds those files")


def resolve(name_or_path, allow_patterns=WEIGHT_PATTERNS, *, required=("config.json",), revision=None,
            cache_dir=None, local_files_only: bool = False) -> Path:
    """The local directory holding `name_or_path`'s files: the directory itself, or the cached
    snapshot of a hub repo id (fetched with `allow_patterns`). `required` files must be there.
    Raises FileNotFoundError (one line) when they cannot be had."""
    path = Path(name_or_path)
    if path.is_dir():
        for name in required:
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path}: no {name}")
        return path
    if path.exists():
        raise FileNotFoundError(f"{path} is a file; pass the checkpoint directory")
    name = str(name_or_path)
    if not _REPO_ID.match(name):
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors

    patterns = list(allow_patterns)
    try:
        folder = Path(snapshot_download(name, revision=revision, cache_dir=cache_dir,
                                        local_files_only=local_files_only, allow_patterns=patterns))
    except errors.RepositoryNotFoundError:
        raise FileNotFoundError(f"no repository {name!r} on the hub (or it is private or gated: log in with "
                                f"`hf auth login`), and no local directory of that name") from None
    except errors.RevisionNotFoundError:
        raise FileNotFoundError(f"{name!r} has no revision {revision!r}") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, OSError) as exc:
        offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = "downloads are off (HF_HUB_OFFLINE=1 or local_files_only)" if offline else type(exc).__name__
        raise FileNotFoundError(f"{name!r} is not a local directory and not in the local Hugging Face cache; "
                                f"{why}: {_how(name, patterns)}") from None
    for file in required:
        if not (folder / file).is_file():
            raise FileNotFoundError(f"{name!r} in the Hugging Face cache has no {file}: {_how(name, patterns)}")
    return folder


def resolve_weights(name_or_path, keep, *, revision=None, cache_dir=None, local_files_only: bool = False) -> Path:
    """Like `resolve` for config.json and the weights, fetching from a repo with a sharded index
    only the shards that hold keys for which `keep(key)` is true (the vision tokenizer of a
    combined -hf checkpoint needs its own shards, not the LM's)."""
    hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    if not is_repo_id(name_or_path):
        return resolve(name_or_path, **hub)
    folder = resolve(name_or_path, ("config.json", "*.safetensors.index.json"), **hub)
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if not indexes:
        return resolve(name_or_path, WEIGHT_PATTERNS, **hub)
    weight_map = json.loads(indexes[0].read_text(encoding="utf-8")).get("weight_map", {})
    shards = sorted({file for key, file in weight_map.items() if keep(key)})
    if not shards:
        raise FileNotFoundError(f"{name_or_path!r}: its index names no weights this model uses")
    return resolve(name_or_path, ["config.json", indexes[0].name, *shards], required=("config.json", *shards),
                   **hub)

