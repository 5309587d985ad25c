"""The on-disk format of prepared SFT data: one MindSpore checkpoint file per sample, and a list.

The format of BAAI's and mindone's Emu3 fine-tuning data, so that data prepared by their
scripts loads here and data prepared here loads there::

    OUT/list/train.json     {"prefix": <directory of the sample files>, "path_list": ["<name>.ckpt", ...],
                             "task": "t2i" | "vqa" | "video" (ours; optional, readers ignore it)}
    OUT/feature/<name>.ckpt  mindspore.save_checkpoint([], path, append_dict={
                                 "name": str, "images": int32 VQ codes [h, w] (an image) or
                                 [t, h, w] (a video, t latent frames), "texts": str,
                                 "response": str (VQA only)})

A relative prefix is taken relative to the list file. The reference scripts write it relative
to the directory they were run in; when no such directory lies beside the list file, the
current directory is tried too. `prepare` writes an absolute prefix, which the reference
loaders (they join it with the current directory) read from anywhere.

Every write is atomic (a temporary file renamed into place), so an interrupted run never
leaves a half-written sample; the list is written last by the caller, so a list that exists
names only complete samples.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from emu3_vq.config import read_json

LIST_DIR = "list"  # OUT/list/train.json
FEATURE_DIR = "feature"  # OUT/feature/<name>.ckpt
LIST_NAME = "train.json"
SUFFIX = ".ckpt"


@dataclass(frozen=True)
class Sample:
    """One prepared sample: the image's (or video's) VQ codes and its caption (T2I, video) or
    question and answer (VQA)."""

    name: str
    images: np.ndarray  # int32 VQ codes [h, w] (an image) or [t, h, w] (a video)
    texts: str  # T2I, video: the caption; VQA: the question, <image> removed
    response: str | None = None  # VQA: the answer; None for T2I data
    path: Path | None = None  # the file it was read from


@dataclass(frozen=True)
class SampleList:
    """A list file: where the sample files are and their names, in order (read lazily)."""

    path: Path  # the list file
    prefix: Path  # the directory of the sample files, resolved
    files: tuple[str, ...]  # path_list entries, relative to prefix
    task: str | None = None  # the task the list records ("t2i", "vqa", "video"); None if it records none

    def __len__(self) -> int:
        return len(self.files)

    def sample_path(self, index: int) -> Path:
        return self.prefix / self.files[index]

    def read(self, index: int) -> Sample:
        """Sample `index`; FileNotFoundError / ValueError naming the file if it is missing or bad."""
        return read_sample(self.sample_path(index))


def list_path(out_dir: str | os.PathLike) -> Path:
    """OUT/list/train.json."""
    return Path(out_dir) / LIST_DIR / LIST_NAME


def feature_dir(out_dir: str | os.PathLike) -> Path:
    """OUT/feature."""
    return Path(out_dir) / FEATURE_DIR


# ---- one sample --------------------------------------------------------------------------------

def _check_codes(images, what: str) -> np.ndarray:
    codes = images.asnumpy() if hasattr(images, "asnumpy") else np.asarray(images)
    if codes.dtype.kind not in "iu":
        raise ValueError(f"{what}: 'images' must hold integer VQ codes, got dtype {codes.dtype}")
    if codes.ndim not in (2, 3) or 0 in codes.shape:
        raise ValueError(f"{what}: 'images' must be non-empty codes [h, w] (an image) or [t, h, w] (a video), "
                         f"got shape {codes.shape}")
    if codes.min() < 0 or codes.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{what}: 'images' holds codes outside [0, 2**31): {codes.min()}..{codes.max()}")
    return codes.astype(np.int32)


def write_sample(path: str | os.PathLike, name: str, images, texts: str, response: str | None = None) -> Path:
    """Write one sample file as the reference does (`ms.save_checkpoint([], path, append_dict=...)`),
    atomically: into a temporary file beside `path`, then renamed. Returns `path`.

    `images` are VQ codes [h, w] or [t, h, w] (any integer array, stored as int32). `response` is given for
    VQA samples only. `path` must end in ".ckpt" (MindSpore would append it otherwise).
    """
    import mindspore as ms

    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"sample file {path} must end in {SUFFIX}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{path}: sample name must be a non-empty string, got {name!r}")
    if not isinstance(texts, str):
        raise ValueError(f"{path}: texts must be a string, got {type(texts).__name__}")
    if response is not None and not isinstance(response, str):
        raise ValueError(f"{path}: response must be a string or None, got {type(response).__name__}")
    codes = _check_codes(images, str(path))
    data = {"name": name, "images": ms.Tensor(codes), "texts": texts}
    if response is not None:
        data["response"] = response

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{SUFFIX}"
    try:
        ms.save_checkpoint([], str(tmp), append_dict=data)
        os.chmod(tmp, 0o644)  # MindSpore leaves its files read-only (0400)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # MindSpore writes <tmp minus .ckpt>.tmp first and renames it to tmp
        for leftover in (tmp, tmp.with_suffix(".tmp")):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
        raise
    return path


def read_sample(path: str | os.PathLike) -> Sample:
    """Read one sample file (ours or the reference scripts'), checking every field.

    FileNotFoundError if it does not exist; ValueError naming the file and the field if a
    field is missing or of the wrong type. A numeric name (the reference writes a record's id
    as it comes, possibly an int) is turned into a string.
    """
    import mindspore as ms

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sample file not found: {path}")
    try:
        data = ms.load_checkpoint(str(path))
    except (ValueError, RuntimeError, OSError) as exc:
        raise ValueError(f"cannot read sample file {path}: {exc}") from None

    def field(key: str, required: bool = True):
        if key not in data:
            if required:
                raise ValueError(f"sample file {path} has no {key!r} field (has: {', '.join(sorted(data))})")
            return None
        return data[key]

    name = field("name")
    if not isinstance(name, str):
        value = name.asnumpy() if hasattr(name, "asnumpy") else None
        if value is None or value.ndim != 0 or value.dtype.kind not in "iu":
            raise ValueError(f"sample file {path}: 'name' must be a string, got {type(name).__name__}")
        name = str(int(value))
    images = field("images")
    if isinstance(images, str):
        raise ValueError(f"sample file {path}: 'images' must be int32 VQ codes [h, w] or [t, h, w], "
                         "got a string")
    codes = _check_codes(images, f"sample file {path}")
    texts = field("texts")
    if not isinstance(texts, str):
        raise ValueError(f"sample file {path}: 'texts' must be a string, got {type(texts).__name__}")
    response = field("response", required=False)
    if response is not None and not isinstance(response, str):
        raise ValueError(f"sample file {path}: 'response' must be a string, got {type(response).__name__}")
    return Sample(name=name, images=codes, texts=texts, response=response, path=path)


# ---- the list ------------------------------------------------------------------------------------

def write_list(path: str | os.PathLike, prefix: str | os.PathLike, files, task: str | None = None) -> Path:
    """Write a list file {"prefix", "path_list"[, "task"]} atomically. Call it last, once every
    sample file it names is written: a list that exists then names only complete samples.
    `task` ("t2i", "vqa" or "video") is recorded for `emu3 train sft`; the reference's readers
    ignore the extra key."""
    from emu3_vq.weights import atomic_write

    path = Path(path)
    files = [str(f) for f in files]
    data = {"prefix": str(prefix), "path_list": files}
    if task is not None:
        data["task"] = str(task)
    text = json.dumps(data, ensure_ascii=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path


def remove_list(path: str | os.PathLike) -> None:
    """Delete a list file if it exists: done before a run writes any sample, so that a run
    that stops part way leaves no list naming samples of an older run beside new ones."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _resolve_prefix(path: Path, prefix: str) -> Path:
    p = Path(prefix)
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = [path.parent / p, Path.cwd() / p]  # ours; then the reference's meaning
    for c in candidates:
        if c.is_dir():
            return c
    tried = " or ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"list file {path}: its prefix directory {prefix!r} does not exist ({tried})")


def read_list(path: str | os.PathLike) -> SampleList:
    """Read a list file. The prefix directory must exist; the sample files are checked when
    read (`SampleList.read`), each error naming its file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"list file not found: {path}")
    data = read_json(path)
    if "prefix" not in data or "path_list" not in data:
        raise ValueError(f"list file {path} must be a JSON object with 'prefix' and 'path_list'")
    prefix, files = data["prefix"], data["path_list"]
    if not isinstance(prefix, str):
        raise ValueError(f"list file {path}: 'prefix' must be a string, got {type(prefix).__name__}")
    if not isinstance(files, list):
        raise ValueError(f"list file {path}: 'path_list' must be a list, got {type(files).__name__}")
    for i, f in enumerate(files):
        if not isinstance(f, str) or not f:
            raise ValueError(f"list file {path}: path_list[{i}] must be a non-empty file name, got {f!r}")
    task = data.get("task")
    if task is not None and (not isinstance(task, str) or not task):
        raise ValueError(f"list file {path}: 'task' must be a non-empty string, got {task!r}")
    return SampleList(path=path, prefix=_resolve_prefix(path, prefix), files=tuple(files), task=task)
