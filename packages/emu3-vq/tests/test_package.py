"""The package surface: lazy exports, version, and the `emu3` command's plugin discovery."""

import subprocess
import sys

import emu3_vq


def test_import_does_not_load_mindspore_and_exports_resolve():
    code = ("import sys, emu3_vq; assert 'mindspore' not in sys.modules, 'eager import';"
            "from emu3_vq import Emu3VQModel, Emu3ImageProcessor, Emu3VQConfig, CheckpointError, smart_resize;"
            "assert Emu3VQModel.__module__ == 'emu3_vq.model'; print(emu3_vq.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == emu3_vq.__version__


def test_unknown_attribute_is_an_attribute_error():
    try:
        emu3_vq.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_emu3_command_lists_the_vq_group(capsys):
    from emu3_vq.cli import build_parser

    parser = build_parser()
    help_text = parser.format_help()
    assert "vq" in help_text
