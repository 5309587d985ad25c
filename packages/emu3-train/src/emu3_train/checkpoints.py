"""Trainer checkpoints: `OUT/checkpoint-STEP/` and `OUT/final/`, each committed as a whole.

A checkpoint directory holds what `Emu3ForCausalLM.from_pretrained` loads directly (config.json
and model.safetensors in the original layout, in the dtype trained) with the tokenizer files,
plus what a resumed run needs: `optimizer.safetensors` (AdamW moments and step count, the
loss scale, all in full: the same file whatever the number of processes) and
`trainer_state.json` (the step, the run's settings, the last metrics).

Every file is written into a fresh hidden sibling directory, `.checkpoint-STEP.partial-XXXX`,
which is renamed to its final name only when complete; a run killed mid-save leaves the
previous checkpoints untouched and a partial directory that no reader looks at (and the next
save removes). The data position needs no state of its own: the sample order is a function of
(seed, step) (see trainer.sample_indices).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from pathlib import Path

import numpy as np

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
FINAL = "final"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{int(step)}"


def write_checkpoint_dir(target: Path, write_files) -> Path:
    """Call write_files(tmp_dir) and commit tmp_dir as `target` in one rename.

    A `target` left by an earlier run (the same step saved again after a resume) is replaced:
    moved aside first, then removed, so `target` is always either the old complete checkpoint
    or the new one.
    """
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".{target.name}.partial-*"):  # from a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    tmp = parent / f".{target.name}.partial-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        write_files(tmp)
        old = None
        if target.exists():
            old = parent / f".{target.name}.old-{secrets.token_hex(4)}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint-STEP directory of `out` with the highest STEP (complete by construction)."""
    best, best_step = None, -1
    if Path(out).is_dir():
        for p in Path(out).iterdir():
            m = _CHECKPOINT_RE.match(p.name)
            if m and p.is_dir() and (p / STATE_FILE).is_file() and int(m.group(1)) > best_step:
                best, best_step = p, int(m.group(1))
    return best


def read_state(directory: Path) -> dict:
    path = Path(directory) / STATE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable trainer state ({exc})") from None


def write_optimizer_state(directory: Path, state: dict[str, np.ndarray]) -> None:
    from emu3_vq.weights import write_safetensors

    write_safetensors(Path(directory) / OPTIMIZER_FILE, state)


def read_optimizer_state(directory: Path) -> dict[str, np.ndarray]:
    from emu3_vq.weights import read_safetensors

    path = Path(directory) / OPTIMIZER_FILE
    if not path.is_file():
        raise ValueError(f"{directory}: no {OPTIMIZER_FILE}; not a trainer checkpoint")
    return read_safetensors(path)
