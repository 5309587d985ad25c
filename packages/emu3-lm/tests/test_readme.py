"""The README's examples run as written, so the documentation cannot drift from the code.

Every ```python block of packages/emu3-lm/README.md is executed in order, in one namespace,
in a temporary directory (the runner is the `readme` fixture of the root conftest.py).
"""

from __future__ import annotations


def test_readme_has_examples(readme):
    assert len(readme.blocks("python")) >= 8


def test_promised_output_is_parsed(readme):
    code = "print(x)   # (1, 2) here (real model: 5)\nprint(y)  # slot 3 is ... of 4\ny = 1  # not a print\n"
    assert readme.promised_output(code) == ["(1, 2)", "slot 3 is", "of 4"]


def test_python_examples_run(readme, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    readme.run(readme.blocks("python"))
    # what the examples say they write is there
    assert (tmp_path / "tiny-lm" / "model.safetensors.index.json").is_file()
    assert (tmp_path / "tiny-lm" / "emu3.tiktoken").is_file()
    assert (tmp_path / "tiny-lm-hf" / "config.json").is_file()
