"""The README's examples run as written, so the documentation cannot drift from the code.

Every ```python block of packages/emu3-train/README.md is executed in order, in one namespace,
in a temporary directory (the runner is the `readme` fixture of the root conftest.py).
"""

from __future__ import annotations

import emu3_train


def test_readme_has_examples(readme):
    assert len(readme.blocks("python")) >= 4


def test_python_examples_run(readme, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    readme.run(readme.blocks("python"))


def test_every_public_name_has_an_example(readme):
    code = "\n".join(block for _, block in readme.blocks("python"))
    for name in emu3_train.__all__:
        if name != "__version__":
            assert f"{name}(" in code, f"no README example calls {name}"
