"""Run inside a fresh venv holding only wheels of this project and what they declare.

    python tools/check_install.py emu3_vq                  # `nox -s isolated`: one wheel alone
    python tools/check_install.py emu3_vq emu3_lm ...      # `nox -s release`: all of them

Checks that each module is imported from site-packages (not from the source tree), that its
version matches its distribution's, and that none of the heavy or test-only libraries were
pulled in by the install (huggingface-hub and tqdm, which emu3-vq declares, are light).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys

HEAVY = ["torch", "transformers", "mindone", "tensorflow", "jax"]


def main(modules: list[str]) -> int:
    assert modules, "usage: check_install.py MODULE..."
    for module in modules:
        mod = importlib.import_module(module)
        where = mod.__file__ or ""
        assert "site-packages" in where, f"{module} imported from {where}, not from site-packages"
        dist = importlib.metadata.version(module.replace("_", "-"))
        assert dist == mod.__version__, f"{module}.__version__ {mod.__version__} != wheel version {dist}"
        print(f"{module} {mod.__version__} from {where}")
    present = [name for name in HEAVY if importlib.util.find_spec(name) is not None]
    assert not present, f"installing {', '.join(modules)} pulled in {present}"
    print(f"none of {HEAVY} installed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
