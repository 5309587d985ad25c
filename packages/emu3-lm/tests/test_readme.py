"""The README's examples run as written, so the documentation cannot drift from the code.

Every ```python block of packages/emu3-lm/README.md is executed in order, in one namespace,
in a temporary directory. A `print(...)  # text` line promises output: each part of `text`
(split at "...", cut at " here") must appear in what its block printed.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
PRINT_COMMENT = re.compile(r"^\s*print\(.*\)\s+#\s*(.+?)\s*$")


def readme_blocks(lang: str) -> list[tuple[int, str]]:
    """(first line number of the code, code) of every fenced block in `lang`."""
    text = README.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        if m.group(1) == lang:
            out.append((text.count("\n", 0, m.start(2)) + 1, m.group(2)))
    return out


def promised_output(code: str) -> list[str]:
    """The fragments of output that the `print(...)  # text` comments of a block promise."""
    fragments = []
    for line in code.splitlines():
        m = PRINT_COMMENT.match(line)
        if m:
            text = re.sub(r"\s+here\b.*$", "", m.group(1))  # "X here (elsewhere Y)": X
            fragments += [part.strip() for part in text.split("...") if part.strip()]
    return fragments


def run_blocks(blocks: list[tuple[int, str]]) -> None:
    namespace: dict = {"__name__": "__readme__"}
    for line, code in blocks:
        # padded so that a traceback names the README's own line numbers
        compiled = compile("\n" * (line - 1) + code, str(README), "exec")
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(compiled, namespace)
        except Exception as exc:
            raise AssertionError(f"README example at line {line} failed: {exc!r}") from exc
        for fragment in promised_output(code):
            assert fragment in out.getvalue(), (
                f"README example at line {line} promises output {fragment!r}; it printed:\n{out.getvalue()}")


def test_readme_has_examples():
    assert len(readme_blocks("python")) >= 8


def test_promised_output_is_parsed():
    code = "print(x)   # (1, 2) here (real model: 5)\nprint(y)  # slot 3 is ... of 4\ny = 1  # not a print\n"
    assert promised_output(code) == ["(1, 2)", "slot 3 is", "of 4"]


def test_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_blocks(readme_blocks("python"))
    # what the examples say they write is there
    assert (tmp_path / "tiny-lm" / "model.safetensors.index.json").is_file()
    assert (tmp_path / "tiny-lm" / "emu3.tiktoken").is_file()
    assert (tmp_path / "tiny-lm-hf" / "config.json").is_file()
