"""The README's examples run as written, so the documentation cannot drift from the code.

Every ```python block of packages/emu3-vq/README.md is executed in order, in one namespace,
in a temporary directory (the runner is the `readme` fixture of the root conftest.py). The
`emu3 vq ...` lines of the ```bash blocks must parse with the real argument parser.
"""

from __future__ import annotations

import argparse
import shlex

def test_readme_has_examples(readme):
    assert len(readme.blocks("python")) >= 5
    assert readme.blocks("bash")


def test_python_examples_run(readme, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    readme.run(readme.blocks("python"))
    # what the examples say they write is there
    for name in ("tiny-vq/config.json", "photo_recon.png", "clip_recon.gif",
                 "clip_recon_frames/frame_0007.png", "tiny-vq-hf/model.safetensors"):
        assert (tmp_path / name).is_file(), name


def test_cli_examples_parse(readme):
    from emu3_vq.commands import register

    parser = argparse.ArgumentParser(prog="emu3")
    register(parser.add_subparsers(dest="group"))
    lines = [ln.strip() for _, code in readme.blocks("bash") for ln in code.splitlines()]
    commands = [ln for ln in lines if ln.startswith("emu3 vq ")]
    assert len(commands) >= 4
    for command in commands:
        argv = shlex.split(command, comments=True)[1:]
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            raise AssertionError(f"README command does not parse: {command}") from None
        assert callable(args.func), command
