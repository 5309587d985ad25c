"""Where a checkpoint's files are: a local directory, or a hub repo id resolved through the
local Hugging Face cache. The one rule for every `from_pretrained` and every `--model`/`--vq` flag.

- An existing local directory is used as it is (after checking the files the caller requires).
- A string of the form ORG/NAME ("BAAI/Emu3-Gen") that is not a local path is fetched with
  huggingface_hub's `snapshot_download`, asking only for the files the caller needs
  (`allow_patterns`): downloaded when online, read from the cache when offline.
- Anything else is an error.

Hub options: every `from_pretrained` takes the keyword-only `revision=None` (branch, tag or
commit; default the main branch), `cache_dir=None` (default huggingface_hub's, from HF_HOME /
HF_HUB_CACHE) and `local_files_only=False` (True: never download), and passes them here. Local
directories ignore them. Downloads are off when `local_files_only=True` or HF_HUB_OFFLINE=1 (read
on every call, whereas huggingface_hub reads it once, when imported).

Every failure is one line: FileNotFoundError saying what is missing and the `hf download` command
that gets it, or ValueError for arguments of the wrong kind. Strings are not turned into paths
before this module sees them: "org/name" is a repo id unless a local path of that name exists.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHT_PATTERNS = ("config.json", "*.safetensors", "*.safetensors.index.json")


def is_repo_id(name) -> bool:
    """Whether `name` is a string of the form ORG/NAME that is not an existing local path."""
    return isinstance(name, str) and bool(_REPO_ID.match(name)) and not Path(name).exists()


def offline(local_files_only: bool = False) -> bool:
    """Whether downloads are off: `local_files_only`, or HF_HUB_OFFLINE set now or when
    huggingface_hub was imported."""
    if local_files_only or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def download_command(repo_id: str, patterns, revision=None, cache_dir=None) -> str:
    """The `hf download` command line that fetches `patterns` of `repo_id`."""
    parts = ["hf download", repo_id]
    if revision is not None:
        parts += ["--revision", str(revision)]
    if cache_dir is not None:
        parts += ["--cache-dir", f"'{cache_dir}'"]
    parts += ["--include", *(f"'{p}'" for p in patterns)]
    return " ".join(parts)


def _how(repo_id: str, patterns, revision=None, cache_dir=None) -> str:
    command = download_command(repo_id, patterns, revision, cache_dir)
    return f"download it with `{command}`, or pass a local directory"


def _check_arguments(name_or_path, allow_patterns, required, revision) -> None:
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path):
        raise ValueError(f"expected a checkpoint directory or a hub repo id (ORG/NAME), got {name_or_path!r}")
    patterns = allow_patterns
    if isinstance(patterns, str) or not patterns or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"allow_patterns must be a non-empty list of file patterns, got {allow_patterns!r}")
    if isinstance(required, str) or not all(isinstance(r, (str, tuple)) for r in required):
        raise ValueError(f"required must be a list of file names (or tuples of alternatives), "
                         f"got {required!r}")
    if revision is not None and not isinstance(revision, str):
        raise ValueError(f"revision must be a branch, tag or commit (a string), got {revision!r}")


def _first_missing(folder: Path, required) -> str | None:
    """The first entry of `required` absent from `folder`: a file name, or a tuple of
    alternatives of which one must be there (spelled 'a, b or c')."""
    for entry in required:
        names = (entry,) if isinstance(entry, str) else entry
        if not any((folder / n).is_file() for n in names):
            return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return None


def resolve(name_or_path, allow_patterns=WEIGHT_PATTERNS, *, required=("config.json",), revision=None,
            cache_dir=None, local_files_only: bool = False) -> Path:
    """The local directory holding `name_or_path`'s files: the directory itself, or the cached
    snapshot of a hub repo id, fetched with `allow_patterns` (fnmatch patterns). Each `required`
    entry (a file name, or a tuple of alternatives) must be there afterwards.
    Raises FileNotFoundError (one line) when the files cannot be had, ValueError for bad arguments."""
    _check_arguments(name_or_path, allow_patterns, required, revision)
    path = Path(name_or_path)
    if path.is_dir():
        missing = _first_missing(path, required)
        if missing:
            raise FileNotFoundError(f"{path}: no {missing}")
        return path
    if path.exists():
        raise FileNotFoundError(f"{path} is a file; pass the directory that holds it")
    name = str(name_or_path)
    if not _REPO_ID.match(name):
        raise FileNotFoundError(f"checkpoint directory not found: {path} (nor is it a hub repo id ORG/NAME)")

    from huggingface_hub import errors, snapshot_download

    patterns = list(allow_patterns)
    how = _how(name, patterns, revision, cache_dir)
    off = offline(local_files_only)
    why_off = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE=1"
    at = "" if revision is None else f" at revision {revision!r}"

    def no_download(exc) -> str:
        if off:
            return f"downloads are off ({why_off})"
        cause = exc.__cause__
        return f"the hub could not be reached ({type(cause).__name__ if cause else 'no connection'})"

    try:
        folder = Path(snapshot_download(name, revision=revision, cache_dir=cache_dir, local_files_only=off,
                                        allow_patterns=patterns))
    except errors.GatedRepoError:
        raise FileNotFoundError(f"{name!r} is a gated repository: accept its conditions on its hub page, "
                                f"log in with `hf auth login`, then {how}") from None
    except errors.RepositoryNotFoundError:
        raise FileNotFoundError(f"no repository {name!r} on the hub (or it is private: log in with "
                                f"`hf auth login`), and no local directory of that name") from None
    except errors.RevisionNotFoundError:
        raise FileNotFoundError(f"{name!r} has no revision {revision!r} on the hub") from None
    except errors.DisabledRepoError:
        raise FileNotFoundError(f"the repository {name!r} is disabled on the hub") from None
    except errors.HFValidationError as exc:
        raise ValueError(f"{name!r} is not a valid hub repo id: {str(exc).splitlines()[0]}") from None
    # not downloading, and the cached file listing names files the snapshot lacks (newer huggingface_hub)
    except getattr(errors, "IncompleteSnapshotError", ()) as exc:
        found = re.search(r"\d+ file\(s\) are missing \([^)]*\)", str(exc))
        detail = f" ({found.group(0)})" if found else ""
        raise FileNotFoundError(f"{name!r}{at} in the local Hugging Face cache is incomplete{detail} and "
                                f"{no_download(exc)}: {how}") from None
    except errors.LocalEntryNotFoundError as exc:
        raise FileNotFoundError(f"{name!r}{at} is not in the local Hugging Face cache and "
                                f"{no_download(exc)}: {how}") from None
    except errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:
            raise FileNotFoundError(f"{name!r}: the hub refused access (401; private or gated: log in with "
                                    f"`hf auth login`)") from None
        raise FileNotFoundError(f"{name!r}: the hub answered {status or type(exc).__name__} "
                                f"({str(exc).splitlines()[0]}): try again later, or {how}") from None
    missing = _first_missing(folder, required)
    if missing and off:  # the cached snapshot may hold part of the repository
        raise FileNotFoundError(f"{name!r}{at} in the local Hugging Face cache has no {missing} and "
                                f"downloads are off ({why_off}): {how}")
    if missing:
        raise FileNotFoundError(f"the hub repository {name!r}{at} has no {missing}: "
                                f"is it the right checkpoint?")
    return folder


def resolve_weights(name_or_path, keep, *, revision=None, cache_dir=None,
                    local_files_only: bool = False) -> Path:
    """`resolve` for config.json and the safetensors weights. From a repo id with a sharded index
    (`*.safetensors.index.json`) only the shards holding a key for which `keep(key)` is true are
    fetched: the vision tokenizer of a combined -hf checkpoint takes its own shards, the LM its own.
    Without an index: `*.safetensors`. A local directory is returned as it is."""
    hub = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only}
    if not is_repo_id(name_or_path):
        return resolve(name_or_path, WEIGHT_PATTERNS, **hub)
    folder = resolve(name_or_path, ("config.json", "*.safetensors.index.json"), **hub)
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if not indexes:
        folder = resolve(name_or_path, WEIGHT_PATTERNS, **hub)
        if not any(folder.glob("*.safetensors")):
            raise FileNotFoundError(f"{name_or_path!r} in the local Hugging Face cache has no *.safetensors: "
                                    f"{_how(name_or_path, WEIGHT_PATTERNS, revision, cache_dir)}")
        return folder
    try:
        weight_map = json.loads(indexes[0].read_text(encoding="utf-8"))["weight_map"]
        shards = sorted({file for key, file in weight_map.items() if keep(key)})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FileNotFoundError(f"{name_or_path!r}: {indexes[0].name} is not a safetensors index "
                                f"({type(exc).__name__}: {exc})") from None
    if not shards:
        raise FileNotFoundError(f"{name_or_path!r}: {indexes[0].name} names no weights of this model "
                                f"(is it the right checkpoint?)")
    return resolve(name_or_path, ["config.json", indexes[0].name, *shards], required=("config.json", *shards),
                   **hub)
