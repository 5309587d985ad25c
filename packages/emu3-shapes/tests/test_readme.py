"""The README's example runs as written (the `readme` fixture of the root conftest.py)."""

from __future__ import annotations


def test_python_example_runs(readme, tmp_path, monkeypatch):
    blocks = readme.blocks("python")
    assert blocks
    monkeypatch.chdir(tmp_path)
    readme.run(blocks)
