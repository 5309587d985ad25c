"""Reading and writing safetensors checkpoints with numpy only, and strict loading into Cells.

A safetensors file is: an 8-byte little-endian header length N, N bytes of JSON
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`),
then the raw little-endian tensor data, offsets relative to the end of the header.
numpy has no bfloat16, so BF16 tensors are widened to float32 on read (exact) and
narrowed with round-to-nearest-even on write; this is why the reader is our own and not
`safetensors.numpy` (which cannot return BF16 without torch or ml_dtypes).

Large checkpoints (the 8B LM in bf16 shards) are read one shard at a time through a
read-only memory map, one tensor at a time, so that loading costs about one tensor of
extra memory. Files are always written under a temporary name and renamed when complete,
and a sharded checkpoint is committed as a whole by its index (see `write_checkpoint`).
"""

from __future__ import annotations

import json
import math
import mmap
import numbers
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

# safetensors dtype name -> little-endian numpy dtype (BF16 is handled separately)
_NUMPY_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_ITEMSIZE = {**{k: v.itemsize for k, v in _NUMPY_DTYPES.items()}, "BF16": 2}
_WRITE_FLOAT_DTYPES = ("F32", "F16", "BF16")
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the limit the safetensors library itself enforces

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt file, missing/unexpected keys, wrong shapes."""


# ---- bfloat16 ----------------------------------------------------------------------------

def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 (exact: bf16 is the top half of a float32)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bfloat16 bit patterns, rounding to nearest even (as torch does)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():  # keep NaN a (quiet) NaN instead of letting the carry turn it into inf
        rounded[nan] = ((u[nan] >> 16) | np.uint32(0x0040)).astype(np.uint16)
    return rounded


# ---- reading -----------------------------------------------------------------------------

def _read_header_and_size(path: Path) -> tuple[dict, int]:
    """Parse and validate a header; returns (header, offset of the data buffer)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
            n = int.from_bytes(head, "little")
            if n > _MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(
                    f"{path}: corrupt or truncated safetensors file (header length {n}, file size {size})")
            raw = f.read(n)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint file not found: {path}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_size = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            shape, begin, end = [int(d) for d in shape], int(begin), int(end)
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors header entry for {name!r}: "
                                  f"{info!r}") from None
        if dtype not in _ITEMSIZE:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        nbytes = math.prod(shape) * _ITEMSIZE[dtype]
        if any(d < 0 for d in shape) or not 0 <= begin <= end or end - begin != nbytes:
            raise CheckpointError(
                f"{path}: corrupt safetensors header: tensor {name!r} {dtype}{shape} "
                f"has offsets [{begin}, {end}]")
        if end > data_size:
            raise CheckpointError(
                f"{path}: truncated safetensors file: tensor {name!r} needs bytes up to {end}, "
                f"the file holds {data_size} data bytes")
    return header, 8 + n


def read_header(path: str | os.PathLike) -> dict:
    """The validated JSON header of one .safetensors file (tensor entries and `__metadata__`)."""
    return _read_header_and_size(Path(path))[0]


def _tensor_entries(header: dict) -> list[tuple[str, dict]]:
    entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
    return sorted(entries, key=lambda kv: kv[1]["data_offsets"][0])


def _find_index(d: Path) -> Path | None:
    if (d / INDEX_FILE).is_file():
        return d / INDEX_FILE
    if (d / SINGLE_FILE).is_file():
        return None
    indexes = sorted(d.glob("*.safetensors.index.json"))
    if len(indexes) == 1:
        return indexes[0]
    if len(indexes) > 1:
        raise CheckpointError(f"{d}: several safetensors index files: {[p.name for p in indexes]}")
    return None


def checkpoint_files(dir_or_file: str | os.PathLike) -> tuple[list[Path], dict[str, str] | None]:
    """The .safetensors files of a checkpoint and, when sharded, its weight_map.

    Accepts a .safetensors file, or a directory holding `model.safetensors.index.json`
    (or one other `*.safetensors.index.json`), `model.safetensors`, or a single `*.safetensors`.
    """
    files, weight_map, _ = _checkpoint(dir_or_file)
    return files, weight_map


def _checkpoint(dir_or_file) -> tuple[list[Path], dict[str, str] | None, str | None]:
    """(files, weight_map or None, the index's checkpoint_id or None)."""
    p = Path(dir_or_file)
    if p.is_file():
        if p.name.endswith(".index.json"):
            return _read_index(p)
        return [p], None, None
    if not p.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    index = _find_index(p)
    if index is not None:
        return _read_index(index)
    if (p / SINGLE_FILE).is_file():
        return [p / SINGLE_FILE], None, None
    files = sorted(p.glob("*.safetensors"))
    if len(files) == 1:
        return files, None, None
    if not files:
        raise FileNotFoundError(f"no .safetensors file in {p}")
    raise CheckpointError(f"{p}: several .safetensors files and no index: {[f.name for f in files]}")


def _read_index(index: Path) -> tuple[list[Path], dict[str, str], str | None]:
    try:
        content = json.loads(index.read_text(encoding="utf-8"))
        weight_map = content["weight_map"]
        checkpoint_id = (content.get("metadata") or {}).get("checkpoint_id")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index}: corrupt index file ({exc!r})") from None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: weight_map is not a JSON object")
    # A shard the index names but the folder lacks is left out with its tensors: a hub snapshot
    # holds only the shards of the part asked for (emu3_vq.hub.resolve_weights), e.g. the vision
    # tokenizer's of a combined -hf checkpoint. A model that needs those tensors reports them
    # missing in its strict key check.
    files = [index.parent / f for f in sorted(set(weight_map.values())) if (index.parent / f).is_file()]
    if not files:
        raise FileNotFoundError(f"none of the shards named in {index} is there")
    present = {f.name for f in files}
    weight_map = {k: f for k, f in weight_map.items() if f in present}
    return files, weight_map, checkpoint_id


def _shard_entries(dir_or_file) -> list[tuple[Path, dict, int, list[tuple[str, dict]]]]:
    """Per shard: (path, header, data start, entries in file order), checked against the index.

    An index that names a checkpoint_id (ours do) accepts only shards carrying the same id:
    a shard from another save is an error, never part of the model.
    """
    files, weight_map, checkpoint_id = _checkpoint(dir_or_file)
    shards = []
    for f in files:
        header, start = _read_header_and_size(f)
        shard_id = (header.get("__metadata__") or {}).get("checkpoint_id")
        if checkpoint_id is not None and shard_id != checkpoint_id:
            raise CheckpointError(f"{f}: not a shard of the checkpoint its index describes (a mix of two "
                                  f"saves); save the checkpoint again")
        entries = _tensor_entries(header)
        if weight_map is not None:
            entries = [(k, v) for k, v in entries if weight_map.get(k) == f.name]
        shards.append((f, header, start, entries))
    if weight_map is not None:
        present = {k for _, _, _, entries in shards for k, _ in entries}
        absent = [k for k in weight_map if k not in present]
        if absent:
            raise CheckpointError(
                f"{dir_or_file}: {len(absent)} tensors in the index are not in their shard: {_few(absent)}")
    return shards


def checkpoint_keys(dir_or_file: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (safetensors dtype such as 'F32' or 'BF16', shape), from the headers only."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for _, _, _, entries in _shard_entries(dir_or_file):
        for name, info in entries:
            out[name] = (info["dtype"], tuple(int(d) for d in info["shape"]))
    return out


class BF16Bits(np.ndarray):
    """The uint16 bit patterns of a bfloat16 tensor, as `iter_checkpoint(..., bf16="bits")`
    yields them: no float32 copy is made; `load_into` turns them into bf16 inside MindSpore."""


def _decode(buf, start: int, info: dict, bf16: str = "float32") -> np.ndarray:
    begin, end = info["data_offsets"]
    shape = tuple(int(d) for d in info["shape"])
    if info["dtype"] == "BF16":
        bits = np.frombuffer(buf, dtype="<u2", count=(end - begin) // 2, offset=start + begin)
        if bf16 == "bits":
            return bits.reshape(shape).view(BF16Bits)
        return bf16_bits_to_float32(bits).reshape(shape)
    dtype = _NUMPY_DTYPES[info["dtype"]]
    return np.frombuffer(buf, dtype=dtype, count=(end - begin) // dtype.itemsize,
                         offset=start + begin).reshape(shape)


def iter_checkpoint(dir_or_file: str | os.PathLike, names: Iterable[str] | None = None,
                    bf16: str = "float32") -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, array) for every tensor (or only `names`), one shard at a time.

    Arrays of native dtypes are read-only views of the memory-mapped file (copy them to
    modify). BF16 tensors come back as new float32 arrays, converted one at a time, or with
    bf16="bits" as zero-copy `BF16Bits` views (half the memory of float32; for `load_into`
    into bf16 parameters of a large model).
    """
    if bf16 not in ("float32", "bits"):
        raise ValueError(f"bf16 must be 'float32' or 'bits', got {bf16!r}")
    shards = _shard_entries(dir_or_file)
    wanted = None
    if names is not None:
        wanted = set(names)
        known = {k for _, _, _, entries in shards for k, _ in entries}
        unknown = sorted(wanted - known)
        if unknown:
            raise CheckpointError(f"{dir_or_file}: {len(unknown)} tensors not in the checkpoint: "
                                  f"{_few(unknown)}")
    for path, _, start, entries in shards:
        if wanted is not None:
            entries = [(k, v) for k, v in entries if k in wanted]
        if not entries:
            continue
        with open(path, "rb") as f:
            # the map outlives this block while yielded arrays still view it
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        for name, info in entries:
            yield name, _decode(buf, start, info, bf16)
        del buf


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of one .safetensors file as a writable numpy array (BF16 as float32)."""
    return {name: np.array(arr) for name, arr in iter_checkpoint(Path(path))}


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `__metadata__` string map of one .safetensors file ({} when absent)."""
    return dict(read_header(path).get("__metadata__") or {})


# ---- writing -----------------------------------------------------------------------------

def _dtype_name(arr: np.ndarray, dtype: str | None) -> str:
    if dtype is not None and arr.dtype.kind == "f":
        return dtype
    for name, np_dtype in _NUMPY_DTYPES.items():
        if arr.dtype.newbyteorder("<") == np_dtype or arr.dtype == np_dtype:
            return name
    raise ValueError(f"cannot store numpy dtype {arr.dtype} in safetensors")


def _to_bytes(arr: np.ndarray, dtype_name: str) -> np.ndarray:
    if dtype_name == "BF16":
        return float32_to_bf16_bits(arr.astype(np.float32, copy=False))
    with np.errstate(over="ignore"):  # values beyond float16's range become inf, as in torch
        return np.ascontiguousarray(arr, dtype=_NUMPY_DTYPES[dtype_name]).reshape(arr.shape)


def _prepare(tensors: Mapping[str, np.ndarray], dtype: str | None):
    if dtype is not None and dtype not in _WRITE_FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {_WRITE_FLOAT_DTYPES} or None, got {dtype!r}")
    items = []
    for name, value in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        arr = np.asarray(value)
        items.append((name, arr, _dtype_name(arr, dtype)))
    return items


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(binary file) on a temporary file beside `path`, then rename it to `path`.

    A failure removes the temporary file, so `path` is either untouched or complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _write_prepared(path: Path, items, metadata: Mapping[str, str] | None) -> int:
    # the safetensors library's layout: larger items first, then by name, so every tensor
    # stays aligned to its item size; the header is padded with spaces to 8 bytes
    items = sorted(items, key=lambda it: (-_ITEMSIZE[it[2]], it[0]))
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, arr, dtype_name in items:
        nbytes = arr.size * _ITEMSIZE[dtype_name]
        header[name] = {"dtype": dtype_name, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)

    def write(f):
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for _, arr, dtype_name in items:  # converted one tensor at a time
            data = _to_bytes(arr, dtype_name)
            if data.size:
                f.write(data.reshape(-1).view(np.uint8))

    atomic_write(path, write)
    return offset


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None, dtype: str | None = None) -> None:
    """Write one .safetensors file; `dtype` ('F32', 'F16', 'BF16') converts floating tensors.

    The file appears only when complete (written under a temporary name, then renamed).
    """
    _write_prepared(Path(path), _prepare(tensors, dtype), metadata)


def _split(items, max_shard_bytes: int | None) -> list[list]:
    """huggingface_hub's split: tensors in order, a new shard when the next tensor would pass
    the limit, a tensor larger than the limit alone in a shard."""
    shards: list[list] = []
    current: list = []
    size = 0
    for item in items:
        nbytes = item[1].size * _ITEMSIZE[item[2]]
        if max_shard_bytes is not None and nbytes > max_shard_bytes:
            shards.append([item])
            continue
        if max_shard_bytes is not None and current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(item)
        size += nbytes
    if current or not shards:
        shards.append(current)
    return shards


def _is_checkpoint_file(name: str, prefix: str) -> bool:
    """A weights file or index that write_checkpoint(prefix=prefix) writes, or the temporary
    file of one (`atomic_write`'s `.NAME.PID.HEX.tmp`, left by a killed save)."""
    p = re.escape(prefix)
    final = rf"{p}(-\d{{5}}-of-\d{{5}}(-[0-9a-f]{{8}})?)?\.safetensors(\.index\.json)?"
    return re.fullmatch(rf"{final}|\.{final}\.\d+\.[0-9a-f]{{8}}\.tmp", name) is not None


def write_checkpoint(directory: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                     max_shard_bytes: int | None = None, dtype: str | None = None,
                     prefix: str = "model", metadata: Mapping[str, str] | None = None) -> list[Path]:
    """Write `prefix.safetensors`, or shards `prefix-0000X-of-0000Y.safetensors` plus
    `prefix.safetensors.index.json` ({"metadata": {"total_parameters", "total_size",
    "checkpoint_id"}, "weight_map"}), the way transformers' save_pretrained lays them out:
    tensors in the mapping's order, a new shard when the next tensor would push the current one
    past `max_shard_bytes` (a positive int), a tensor larger than that alone in a shard. Every
    file gets the metadata {"format": "pt"} (plus `metadata`). Returns the files written.

    The checkpoint is committed as a whole, so that a reader sees the old checkpoint, the new
    one, or an error, never a mix, even when the save fails part way (disk full, Ctrl-C):
    - every file is written under a temporary name and renamed when complete;
    - shards never replace a file of the checkpoint in place: when a standard shard name is
      taken (a re-save with as many shards), every shard of this save gets the save's id in
      its name (`model-00001-of-00003-1a2b3c4d.safetensors`);
    - the index is written last and is the commit: it names the save's `checkpoint_id`, which
      every shard also carries in its metadata, and the reader refuses a shard of another save;
      a single-file save is committed by its own rename (and the removal of an old index);
    - only then are the other weights files of `prefix` removed (an earlier save's shards,
      files of a killed save), so none survives a re-save. Other files in `directory`
      (config.json, tokenizer files) are left alone; two saves into one directory at the same
      time are not supported.
    A failed save removes the shards it wrote and leaves the previous checkpoint as it was.
    Nothing is created when the arguments are invalid.
    """
    limit = max_shard_bytes
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral)
                              or limit <= 0):
        raise ValueError(f"max_shard_bytes must be a positive number of bytes or None, got {limit!r}")
    directory = Path(directory)
    items = _prepare(tensors, dtype)
    shards = _split(items, max_shard_bytes)
    metadata = {"format": "pt", **(metadata or {})}
    directory.mkdir(parents=True, exist_ok=True)
    if len(shards) == 1:
        written = [directory / f"{prefix}.safetensors"]
        _write_prepared(written[0], shards[0], metadata)
    else:
        written = _write_shards(directory, prefix, shards, metadata)
    # after the commit: the previous save's files (the index first, so that no reader is sent
    # to a removed shard), and files of failed or killed saves
    index_first = sorted(directory.iterdir(), key=lambda p: not p.name.endswith(".index.json"))
    for old in index_first:
        if old not in written and _is_checkpoint_file(old.name, prefix) and old.is_file():
            old.unlink()
    return written


def _write_shards(directory: Path, prefix: str, shards: list[list], metadata: dict) -> list[Path]:
    """Write the shards, then the index that commits them; on failure remove this save's shards."""
    checkpoint_id = secrets.token_hex(8)
    count = len(shards)
    names = [f"{prefix}-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    if any((directory / name).exists() for name in names):  # never replace a file a reader may use
        names = [f"{prefix}-{i + 1:05d}-of-{count:05d}-{checkpoint_id[:8]}.safetensors" for i in range(count)]
    metadata = {**metadata, "checkpoint_id": checkpoint_id}
    written: list[Path] = []
    try:
        total = 0
        weight_map = {}
        for name, shard in zip(names, shards):
            written.append(directory / name)
            total += _write_prepared(directory / name, shard, metadata)
            weight_map.update({item[0]: name for item in shard})
        n_params = sum(item[1].size for shard in shards for item in shard)
        index = {"metadata": {"total_parameters": n_params, "total_size": total,
                              "checkpoint_id": checkpoint_id},
                 "weight_map": dict(sorted(weight_map.items()))}
        text = json.dumps(index, indent=2, sort_keys=True) + "\n"
        index_path = directory / f"{prefix}.safetensors.index.json"
        atomic_write(index_path, lambda f: f.write(text.encode("utf-8")))  # the commit
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written + [index_path]


# ---- MindSpore Cells ---------------------------------------------------------------------

def _few(names, n: int = 10) -> str:
    names = list(names)
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def _expected_shapes(expected_names) -> dict[str, tuple[int, ...] | None]:
    if isinstance(expected_names, Mapping):
        out = {}
        for name, value in expected_names.items():
            if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
                value = value[1]  # checkpoint_keys() format: (dtype, shape)
            out[name] = None if value is None else tuple(int(d) for d in value)
        return out
    return {name: None for name in expected_names}


def _problems(what: str, missing, unexpected, mismatched) -> str | None:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {_few(sorted(missing))}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_few(sorted(unexpected))}")
    if mismatched:
        shown = [f"{n} (checkpoint {list(a)} vs model {list(b)})" for n, a, b in sorted(mismatched)]
        parts.append(f"{len(mismatched)} shape mismatches: {_few(shown)}")
    return f"{what} does not match the model: " + "; ".join(parts) if parts else None


_FINITE_CHUNK = 1 << 22  # values per np.isfinite call: 4 MiB of booleans at most


def _non_finite(arr: np.ndarray, bits: bool = False) -> bool:
    """True when a floating array (or bfloat16 bit patterns, `bits`) holds a NaN or an infinity;
    read in chunks so that the check costs a few MiB, not a copy of the tensor."""
    if not bits and arr.dtype.kind not in "fc":
        return False
    flat = arr.reshape(-1)
    for i in range(0, flat.size, _FINITE_CHUNK):
        chunk = flat[i:i + _FINITE_CHUNK]
        if bits and ((chunk & 0x7F80) == 0x7F80).any():  # exponent all ones: inf or NaN
            return True
        if not bits and not np.isfinite(chunk).all():
            return True
    return False


def load_into(cell, named_arrays, *, what: str = "checkpoint", expected_names=None,
              check_finite: bool = True) -> None:
    """Assign arrays to `cell`'s parameters by name, strictly.

    named_arrays: a mapping or an iterable of (parameter name, numpy array or `BF16Bits`),
    names as in `cell.parameters_and_names()`. Missing, unexpected and wrongly shaped names raise a
    CheckpointError naming them. The check happens before any parameter changes when the
    names are known up front: a mapping, or `expected_names` (names, name -> shape, or
    `checkpoint_keys()` output translated to parameter names). Otherwise a stream that
    fails part way leaves the cell partly loaded. Each array is cast to its parameter's
    dtype; memory peaks at about one tensor beyond the model.

    A tensor holding NaN or inf is a CheckpointError naming it (a corrupt file or a diverged
    run would otherwise give flat images or text without a word); `check_finite=False` loads
    it anyway. The check reads each tensor once more, at memory speed (10-14 GiB/s measured on
    a 2-core CPU: about 1.5 s for the 8B LM's 17 GB of bf16 once its pages are read).
    """
    import mindspore as ms

    params = dict(cell.parameters_and_names())
    if isinstance(named_arrays, Mapping):
        if expected_names is None:
            expected_names = {k: np.shape(v) for k, v in named_arrays.items()}
        named_arrays = named_arrays.items()
    if expected_names is not None:
        expected = _expected_shapes(expected_names)
        missing = [n for n in params if n not in expected]
        unexpected = [n for n in expected if n not in params]
        mismatched = [(n, s, tuple(params[n].shape)) for n, s in expected.items()
                      if n in params and s is not None and tuple(s) != tuple(params[n].shape)]
        message = _problems(what, missing, unexpected, mismatched)
        if message:
            raise CheckpointError(message)

    seen: set[str] = set()
    unexpected, mismatched = [], []
    for name, arr in named_arrays:
        param = params.get(name)
        if param is None:
            unexpected.append(name)
            continue
        if name in seen:
            raise CheckpointError(f"{what}: {name} is given twice")
        bits = isinstance(arr, BF16Bits)
        arr = np.asarray(arr)
        if tuple(arr.shape) != tuple(param.shape):
            mismatched.append((name, arr.shape, tuple(param.shape)))
            continue
        if check_finite and _non_finite(arr, bits):
            raise CheckpointError(f"{what}: {name} holds NaN or inf values: a corrupt checkpoint or a "
                                  f"diverged run (load_into(..., check_finite=False) loads it anyway)")
        seen.add(name)
        # (ascontiguousarray turns a 0-d array into shape (1,): keep the shape, e.g. num_batches_tracked)
        tensor = ms.Tensor(np.ascontiguousarray(arr).reshape(arr.shape))
        if bits:  # reinterpret the uint16 patterns as bfloat16, no float32 round trip
            tensor = tensor.view(ms.bfloat16)
        if tensor.dtype != param.dtype:  # cast inside MindSpore: numpy has no bf16
            tensor = tensor.astype(param.dtype)
        param.set_data(tensor)
        del tensor
    missing = [n for n in params if n not in seen and n not in {m[0] for m in mismatched}]
    message = _problems(what, missing, unexpected, mismatched)
    if message:
        raise CheckpointError(message)


def state_dict_numpy(cell) -> dict[str, np.ndarray]:
    """name -> numpy copy of every parameter of `cell` (bf16 parameters as float32)."""
    import mindspore as ms

    out = {}
    for name, param in cell.parameters_and_names():
        value = param.astype(ms.float32) if param.dtype == ms.bfloat16 else param
        out[name] = np.array(value.asnumpy())
    return out
