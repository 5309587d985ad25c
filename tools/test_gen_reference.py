"""Tests of tools/gen_reference.py's deterministic rendering and of `--check` (no MindSpore:
the renderers are replaced where a test needs the whole run).

    pytest tools/test_gen_reference.py
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("gen_reference", Path(__file__).with_name("gen_reference.py"))
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)


def _helper():
    pass


class _Thing:
    pass


def test_defaults_have_no_addresses_or_machine_paths():
    assert gen.show_value(_helper) == f"{__name__}._helper"
    assert gen.show_value(len) == "len"
    assert " at 0x" not in gen.show_value(_Thing())
    assert gen.show_value(str(Path.home() / "x")) == repr("~/x")
    assert gen.scrub(f"{gen.ROOT}/docs") == "./docs"
    assert gen.show_value(frozenset({"b", "a"})) == "frozenset({'a', 'b'})"


def test_signature_fits_or_breaks_one_parameter_a_line():
    def f(a: int, b=_helper, /, c: str | None = None, *, d: float = 1.0) -> list[int]:
        pass

    sig = gen.signature(f)
    assert gen.format_signature("f", sig, width=200) == (
        f"f(a: int, b={__name__}._helper, /, c: str | None = None, *, d: float = 1.0) -> list[int]")
    long = gen.format_signature("f", sig, width=20)
    assert long.splitlines() == ["f(", "    a: int,", f"    b={__name__}._helper,", "    /,",
                                 "    c: str | None = None,", "    *,", "    d: float = 1.0,",
                                 ") -> list[int]"]


def test_quoted_string_annotations_are_unquoted():
    def g(x) -> "Emu3VQConfig":  # noqa: F821, UP037 -- a forward reference, as the packages write them
        pass

    assert gen.format_signature("g", gen.signature(g)) == "g(x) -> Emu3VQConfig"


def test_dataclass_made_up_docstring_is_left_out():
    @dataclasses.dataclass
    class Plain:
        x: int = 1

    @dataclasses.dataclass
    class Documented:
        """Says what it is."""

        x: int = 1

    assert gen.own_doc(Plain) == ""
    assert gen.own_doc(Documented) == "Says what it is."


def test_members_of_project_classes_only(monkeypatch):
    monkeypatch.setattr(gen, "PACKAGES", (__name__.split(".")[0],))

    class Base:
        def inherited(self):
            """From the base."""

    class Child(Base):
        def method(self, x: int) -> int:
            return x

        @classmethod
        def build(cls, path):
            return cls()

        @property
        def size(self):
            return 1

        def _private(self):
            pass

    names = [(n, kind) for n, kind, _ in gen.class_members(Child)]
    assert names == [("method", "method"), ("build", "classmethod"), ("size", "property"),
                     ("inherited", "method")]
    assert "object" not in {n for n, _ in names}
    text = "\n".join(gen.render_object("Child", Child))
    assert "Child.method(x: int) -> int" in text and "Child.build(path)" in text


def test_check_reports_a_stale_file_and_writes_nothing(tmp_path, monkeypatch, capsys):
    cli, api = tmp_path / "cli.md", tmp_path / "api.md"
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    monkeypatch.setattr(gen, "CLI_MD", cli)
    monkeypatch.setattr(gen, "API_MD", api)
    monkeypatch.setattr(gen, "render_cli", lambda: "cli\nnew\n")
    monkeypatch.setattr(gen, "render_api", lambda: "api\n")
    assert gen.main([]) == 0
    assert cli.read_text() == "cli\nnew\n" and api.read_text() == "api\n"
    assert gen.main(["--check"]) == 0
    cli.write_text("cli\nold\n")
    capsys.readouterr()
    assert gen.main(["--check"]) == 1
    out, err = capsys.readouterr()
    assert "-old" in out and "+new" in out and "python tools/gen_reference.py" in err
    assert cli.read_text() == "cli\nold\n"
    api.unlink()
    assert gen.main(["--check"]) == 1


@pytest.mark.parametrize("kind", ["POSITIONAL_ONLY", "KEYWORD_ONLY"])
def test_markers_once(kind):
    params = [inspect.Parameter(n, getattr(inspect.Parameter, kind)) for n in ("a", "b")]
    text = gen.format_signature("h", inspect.Signature(params), width=1)
    marker = "/" if kind == "POSITIONAL_ONLY" else "*"
    assert [line.strip(" ,") for line in text.splitlines()].count(marker) == 1
