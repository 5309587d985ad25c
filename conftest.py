"""Shared pytest setup for every package's tests and integration/."""

from __future__ import annotations

import importlib
import os

os.environ.setdefault("GLOG_v", "3")  # MindSpore: warnings and errors only
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub


def pytest_configure(config):
    # `nox -s isolated` runs a package's tests against its installed wheel: make sure that
    # is what they import, not the source tree.
    module = os.environ.get("EMU3_EXPECT_INSTALLED")
    if module:
        mod = importlib.import_module(module)
        if "site-packages" not in (mod.__file__ or ""):
            raise RuntimeError(f"{module} imported from {mod.__file__}, expected the installed wheel")
