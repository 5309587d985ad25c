"""Every session a release needs: per-package tests, isolated wheel installs, layering,
integration across packages, the release checks on the wheels, the slow tests, benchmarks,
and a demo of the main job.

    nox -t ci                          # README's test command: layering, isolated, release
    nox -s "tests(package='emu3-vq')"  # one package, with only its declared siblings
    nox -s "isolated(package='emu3-vq')"
    nox -s release                     # all wheels together; integration suite against them
    nox -s layering integration slow bench demo
"""

from __future__ import annotations

import functools
import os
import pathlib
import shutil
import sys

import nox

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = pathlib.Path(__file__).parent
PACKAGES_DIR = ROOT / "packages"

# Test-only dependencies: the oracle (transformers' Emu3 classes on the CPU build of torch).
# torch==2.13.0 is the CPU wheel; never a runtime dependency of any package. safetensors writes
# the tests' reference files; the packages read and write safetensors with emu3_vq.weights.
TEST_DEPS = ["pytest>=8", "torch==2.13.0", "transformers==5.23.0", "psutil", "safetensors>=0.4"]

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False
nox.options.sessions = ["layering", "tests", "integration"]


def _project(name: str) -> dict:
    with open(PACKAGES_DIR / name / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _package_names() -> list[str]:
    return sorted(p.parent.name for p in PACKAGES_DIR.glob("*/pyproject.toml"))


def _siblings(name: str) -> list[str]:
    """Declared dependencies of `name` that are packages of this monorepo, transitively."""
    known = set(_package_names())
    out: list[str] = []
    todo = [name]
    while todo:
        for req in _project(todo.pop()).get("dependencies", []):
            dep = req.split(";")[0].split("[")[0].strip()
            for sep in "<>=!~ ":
                dep = dep.split(sep)[0]
            if dep in known and dep not in out:
                out.append(dep)
                todo.append(dep)
    return out


def _with_extras(name: str, target: str | None = None) -> str:
    """`target` (default: the name) with every extra of package `name`: tests cover them all."""
    extras = sorted(_project(name).get("optional-dependencies", {}))
    return f"{target or name}[{','.join(extras)}]" if extras else (target or name)


PACKAGES = _package_names()
# emu3-vq first: the order in which a fresh machine sees the failures that matter most.
PACKAGES.sort(key=lambda n: len(_siblings(n)))


def _pruned(func):
    """With EMU3_NOX_PRUNE=1 (set by .ci/run), delete the session's venv when it ends.

    Each venv holds MindSpore, torch and transformers (about 4 GB); a CI machine with a
    small disk cannot keep nine of them.
    """

    @functools.wraps(func)
    def wrapper(session: nox.Session, *args, **kwargs):
        try:
            return func(session, *args, **kwargs)
        finally:
            location = getattr(session.virtualenv, "location", None)
            if os.environ.get("EMU3_NOX_PRUNE") == "1" and location and os.path.isdir(location):
                shutil.rmtree(location, ignore_errors=True)

    return wrapper


def _env(session: nox.Session) -> dict:
    # Keep MindSpore quiet and on the CPU; tests build everything they need.
    return {"GLOG_v": "3", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _build_wheels(session: nox.Session, names: list[str]) -> dict[str, pathlib.Path]:
    """Build the wheel of each package into a fresh folder: {name: wheel file}."""
    dist = pathlib.Path(session.create_tmp()) / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.install("build", "hatchling")
    wheels = {}
    for name in names:
        session.run("python", "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
                    str(PACKAGES_DIR / name), silent=True)
        (wheels[name],) = dist.glob(name.replace("-", "_") + "-*.whl")
    return wheels


def _install_wheels(session: nox.Session, wheels: dict[str, pathlib.Path], *extras_of: str) -> None:
    """Install the wheel files themselves (with the extras of the packages in `extras_of`): a
    name with --find-links could be served by a higher version on the index instead."""
    session.install("--find-links", str(next(iter(wheels.values())).parent),
                    *[_with_extras(n, str(w)) if n in extras_of else str(w) for n, w in wheels.items()])


def _check_from_wheels(session: nox.Session, names: list[str]) -> None:
    """`pip show` of each package: installed in this venv's site-packages, not editable."""
    out = session.run("pip", "show", *names, silent=True) or ""
    venv = os.path.realpath(session.virtualenv.location)
    shown = {}
    for block in out.split("\n---\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "Name" in fields:
            shown[fields["Name"]] = fields
    for name in names:
        fields = shown.get(name)
        if fields is None:
            session.error(f"{name} is not installed")
        location = os.path.realpath(fields.get("Location", ""))
        if not (location.startswith(venv + os.sep) and os.path.basename(location) == "site-packages"):
            session.error(f"{name} is installed at {location}, not in {venv}'s site-packages")
        if fields.get("Editable project location"):
            session.error(f"{name} is an editable install of {fields['Editable project location']}")
    session.log(f"{', '.join(names)}: installed from the wheels into site-packages")


@nox.session
@nox.parametrize("package", PACKAGES)
@_pruned
def tests(session: nox.Session, package: str) -> None:
    """Editable install of one package and its declared siblings only; run its tests."""
    for sib in reversed(_siblings(package)):
        session.install("-e", str(PACKAGES_DIR / sib))
    session.install("-e", _with_extras(package, str(PACKAGES_DIR / package)), *TEST_DEPS)
    session.run("pytest", str(PACKAGES_DIR / package / "tests"), *session.posargs, env=_env(session))


@nox.session(tags=["ci"])
@nox.parametrize("package", PACKAGES)
@_pruned
def isolated(session: nox.Session, package: str) -> None:
    """Build the wheels, install the package alone from them in a fresh venv, check, test."""
    wheels = _build_wheels(session, [package, *_siblings(package)])
    _install_wheels(session, wheels)
    session.run("pip", "check")
    module = package.replace("-", "_")
    session.run("python", str(ROOT / "tools" / "check_install.py"), module, env=_env(session))
    if _project(package).get("optional-dependencies"):  # after the check: extras may be heavy
        _install_wheels(session, {package: wheels[package]}, package)  # for the tests
    session.install(*TEST_DEPS)
    # Run from a scratch directory so that nothing under packages/*/src can be imported.
    tests_dir = str(PACKAGES_DIR / package / "tests")
    session.chdir(session.create_tmp())
    session.run("pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), tests_dir,
                *session.posargs, env={**_env(session), "EMU3_EXPECT_INSTALLED": module})


@nox.session(python=False, tags=["ci"])
def layering(session: nox.Session) -> None:
    """Each package declares what its src imports and imports what it declares; no torch etc."""
    session.run(sys.executable, str(ROOT / "tools" / "check_layering.py"))


def _install_all(session: nox.Session, *extra: str) -> None:
    editable = [_with_extras(name, str(PACKAGES_DIR / name)) for name in PACKAGES]
    session.install(*[arg for target in editable for arg in ("-e", target)], *extra)


@nox.session
@_pruned
def integration(session: nox.Session) -> None:
    """End-to-end across packages (CPU here; Ascend/GPU when MindSpore sees one), editable."""
    _install_all(session, *TEST_DEPS)
    session.run("pytest", str(ROOT / "integration"), *session.posargs, env=_env(session))


@nox.session(tags=["ci"])
@_pruned
def release(session: nox.Session) -> None:
    """All wheels installed together in a fresh venv; metadata, reference, integration suite.

    As a user gets the release: sibling ranges, URLs and READMEs checked (check_versions.py),
    every wheel built and installed from the wheel files with its extras, each package shown
    in site-packages, `pip check`, nothing heavy pulled in, docs/cli.md and docs/api.md up to
    date, then the integration suite (and the tests of tools/: the shapes data and measures
    the default model is checked with, the reference generator) against the installed wheels
    from a scratch directory.
    """
    wheels = _build_wheels(session, PACKAGES)  # installs build and hatchling, and so packaging
    session.run("python", str(ROOT / "tools" / "check_versions.py"))
    _install_wheels(session, wheels, *PACKAGES)
    _check_from_wheels(session, PACKAGES)
    session.run("pip", "check")
    modules = [name.replace("-", "_") for name in PACKAGES]
    session.run("python", str(ROOT / "tools" / "check_install.py"), *modules, env=_env(session))
    reference = ROOT / "tools" / "gen_reference.py"  # docs/cli.md and docs/api.md from the code
    if reference.exists():
        session.run("python", str(reference), "--check", env=_env(session))
    session.install(*TEST_DEPS)
    # From a scratch directory, as `isolated` does: nothing under packages/*/src can be imported.
    session.chdir(session.create_tmp())
    session.run("pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT),
                str(ROOT / "integration"), str(ROOT / "tools"), *session.posargs,
                env={**_env(session), "EMU3_EXPECT_INSTALLED": modules[-1]})


@nox.session
@_pruned
def slow(session: nox.Session) -> None:
    """Tests marked slow (real-size layers, long runs), all packages."""
    _install_all(session, *TEST_DEPS)
    paths = [str(PACKAGES_DIR / n / "tests") for n in PACKAGES] + [str(ROOT / "integration")]
    session.run("pytest", "-m", "slow", *paths, *session.posargs, env=_env(session))


@nox.session
@_pruned
def bench(session: nox.Session) -> None:
    """Benchmarks side by side with transformers on torch CPU; JSON + docs/benchmarks.md."""
    _install_all(session, *TEST_DEPS)
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    which = session.posargs or ["vq", "lm", "decoding", "train"]
    for name in which:
        session.run("python", str(ROOT / "tools" / "bench" / f"bench_{name}.py"),
                    "--out", str(out / f"{name}.json"), env=_env(session))
    session.run("python", str(ROOT / "tools" / "bench" / "report.py"), str(out),
                str(ROOT / "docs" / "benchmarks.md"))


@nox.session
@_pruned
def demo(session: nox.Session) -> None:
    """The main job on a fresh machine: install the packages and generate an image with the
    default model (emu3-shapes)."""
    session.install(*[str(PACKAGES_DIR / name) for name in PACKAGES])
    out = os.environ.get("EMU3_DEMO_OUT", str(ROOT / "demo-out"))
    os.makedirs(out, exist_ok=True)
    session.run("emu3", "generate", "image", "a red circle on a blue background", "--seed", "0",
                "--out", os.path.join(out, "image.png"), env=_env(session))
