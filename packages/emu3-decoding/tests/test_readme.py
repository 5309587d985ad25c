"""The README's examples run as written, so the documentation cannot drift from the code.

Every ```python block of packages/emu3-decoding/README.md is executed in order, in one
namespace, in a temporary directory (the runner is the `readme` fixture of the root
conftest.py). Every `emu3 generate ...` line of its ```bash blocks is parsed by the real
parser, and the options its command table names must exist.
"""

from __future__ import annotations

import argparse
import re
import shlex

import pytest
from emu3_decoding import commands
from PIL import Image


def generate_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `emu3` parser with only the `generate` group, and its subcommand parsers by name."""
    parser = argparse.ArgumentParser(prog="emu3")
    subparsers = parser.add_subparsers(dest="group")
    commands.register(subparsers)
    gen = subparsers.choices["generate"]
    sub = next(a for a in gen._actions if isinstance(a, argparse._SubParsersAction))
    return parser, dict(sub.choices)


def command_lines(readme) -> list[tuple[int, str]]:
    """(README line, command) of every `emu3 generate` line of the bash blocks, continuations joined."""
    lines = []
    for start, code in readme.blocks("bash"):
        joined = re.sub(r"\\\n\s*", " ", code)  # a backslash-newline continues the line
        for offset, line in enumerate(joined.splitlines()):
            if line.strip().startswith("emu3 generate"):
                lines.append((start + offset, line.strip()))
    return lines


def test_readme_has_examples(readme):
    assert len(readme.blocks("python")) >= 10
    assert len(command_lines(readme)) >= 6


# ~2.5 min on 2 cores (every example compiles its own graphs); the README's commands still parse by default
@pytest.mark.slow
def test_python_examples_run(readme, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    readme.run(readme.blocks("python"))
    # what the examples say they build and write is there
    assert (tmp_path / "demo-lm" / "config.json").is_file()
    assert (tmp_path / "demo-lm" / "emu3.tiktoken").is_file()
    assert (tmp_path / "demo-vq" / "preprocessor_config.json").is_file()
    assert Image.open(tmp_path / "circle.png").size == (64, 64)
    assert Image.open(tmp_path / "dog.png").size == (88, 48)
    gif = Image.open(tmp_path / "continued.gif")
    assert gif.n_frames == 4 and gif.size == (48, 48)


def test_command_lines_parse(readme):
    parser, _ = generate_parser()
    seen = set()
    for line, command in command_lines(readme):
        argv = shlex.split(command, comments=True)
        assert argv[:2] == ["emu3", "generate"], f"README line {line}: {command}"
        try:
            args = parser.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"README line {line}: `{command}` does not parse")
        expected = {"image": commands.run_image, "answer": commands.run_answer,
                    "video-continue": commands.run_video}[args.generate_command]
        assert args.func is expected
        seen.add(args.generate_command)
    assert seen == {"image", "answer", "video-continue"}


def test_command_table_names_real_options(readme):
    _, subcommands = generate_parser()
    text = readme.path.read_text(encoding="utf-8")
    rows = re.findall(r"^\| `emu3 generate ([\w-]+)[^|]*\|(.*)\|$", text, re.M)
    assert {name for name, _ in rows} == set(subcommands)
    for name, options in rows:
        known = {s for a in subcommands[name]._actions for s in a.option_strings}
        named = set(re.findall(r"`(--[\w-]+)", options))
        assert named, f"no options listed for {name}"
        assert named <= known, f"{name}: {sorted(named - known)} not options of `emu3 generate {name}`"
        # and the table leaves none out
        assert known - {"-h", "--help"} <= named, f"{name}: {sorted(known - named)} missing from the table"
