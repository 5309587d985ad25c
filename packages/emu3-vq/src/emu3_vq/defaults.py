"""The default model: what every `emu3` command and loader uses when no model is named.

The one rule, for all packages: the default model is the one an installed distribution
registers under the `emu3.models` entry point named "default" (the package emu3-shapes: a
small Emu3 trained with emu3-train on coloured shapes; emu3-decoding and emu3-train depend on
it, emu3-vq does not). Found through package metadata, so no package imports another for it.

Without it (emu3-vq installed alone), the vision-tokenizer commands fall back to a tiny
random-weight tokenizer built into the user cache (`emu3_vq.tiny`) and say so; asking for the
default language model is then an error naming the package to install.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from pathlib import Path

GROUP = "emu3.models"
NAME = "default"
PACKAGE = "emu3-shapes"


class NoDefaultModel(FileNotFoundError):
    """No default model is installed (pip install emu3-shapes), or its files are missing."""


def _registered():
    found = [ep for ep in entry_points(group=GROUP) if ep.name == NAME]
    return found[0] if found else None


def installed() -> bool:
    """Whether a default model is registered."""
    return _registered() is not None


def model_dirs() -> dict[str, Path]:
    """{"lm": ..., "vq": ...} of the default model; NoDefaultModel when none is installed or a
    directory it names lacks its config.json."""
    ep = _registered()
    if ep is None:
        raise NoDefaultModel(f"no model named and no default model installed: pip install {PACKAGE} "
                             f"(or name a checkpoint directory or hub repo id)")
    dirs = {key: Path(value) for key, value in ep.load()().items()}
    for key, path in dirs.items():
        if not (path / "config.json").is_file():
            raise NoDefaultModel(f"the default model's {key} directory {path} has no config.json; "
                                 f"reinstall {ep.dist.name if ep.dist else PACKAGE}")
    return dirs


def describe() -> str:
    """One line naming the default model, for notes."""
    ep = _registered()
    if ep is None:
        return "no default model installed"
    dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else ep.value
    return f"the default model ({dist}: a small Emu3 trained on coloured shapes, 32x32 pixels)"


def note(quiet: bool, what: str = "--model") -> None:
    if not quiet:
        print(f"emu3: note: no {what} given, using {describe()}", file=sys.stderr)


def lm_dir(quiet: bool = True) -> Path:
    """The default language model's directory (with its tokenizer)."""
    path = model_dirs()["lm"]
    note(quiet)
    return path


def vq_dir(quiet: bool = True) -> Path:
    """The default vision tokenizer's directory; without a default model installed, the tiny
    random-weight one of `emu3_vq.tiny` (with a note saying so unless `quiet`)."""
    if installed():
        path = model_dirs()["vq"]
        note(quiet)
        return path
    from .tiny import default_model_dir

    path = default_model_dir(quiet=True)
    if not quiet:
        print(f"emu3: note: no --model given and no default model installed (pip install {PACKAGE}); using a "
              f"tiny vision tokenizer with untrained random weights at {path}: codes and images are not meaningful",
              file=sys.stderr)
    return path
