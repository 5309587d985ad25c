"""Every session a release needs: per-package tests, isolated wheel installs, layering,
integration across packages, the slow tests, benchmarks, and a demo of the main job.

    nox -t ci                          # README's test command: layering, isolated, integration
    nox -s "tests(package='emu3-vq')"  # one package, with only its declared siblings
    nox -s "isolated(package='emu3-vq')"
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
# torch==2.13.0 is the CPU wheel; never a runtime dependency of any package.
TEST_DEPS = ["pytest>=8", "torch==2.13.0", "transformers==5.23.0", "psutil"]

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


@nox.session
@nox.parametrize("package", PACKAGES)
@_pruned
def tests(session: nox.Session, package: str) -> None:
    """Editable install of one package and its declared siblings only; run its tests."""
    for sib in reversed(_siblings(package)):
        session.install("-e", str(PACKAGES_DIR / sib))
    session.install("-e", str(PACKAGES_DIR / package), *TEST_DEPS)
    session.run("pytest", str(PACKAGES_DIR / package / "tests"), *session.posargs, env=_env(session))


@nox.session(tags=["ci"])
@nox.parametrize("package", PACKAGES)
@_pruned
def isolated(session: nox.Session, package: str) -> None:
    """Build the wheels, install the package alone from them in a fresh venv, check, test."""
    dist = pathlib.Path(session.create_tmp()) / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.install("build", "hatchling")
    for name in [package, *_siblings(package)]:
        session.run("python", "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
                    str(PACKAGES_DIR / name), silent=True)
    session.install("--find-links", str(dist), package)
    session.run("pip", "check")
    module = package.replace("-", "_")
    session.run("python", str(ROOT / "tools" / "check_install.py"), module, env=_env(session))
    session.install(*TEST_DEPS)
    # Run from a scratch directory so that nothing under packages/*/src can be imported.
    tests_dir = str(PACKAGES_DIR / package / "tests")
    session.chdir(session.create_tmp())
    session.run("pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), tests_dir,
                *session.posargs, env={**_env(session), "EMU3_EXPECT_INSTALLED": module})


@nox.session(python=False, tags=["ci"])
def layering(session: nox.Session) -> None:
    """No package imports a sibling it does not declare, or torch/transformers/mindone."""
    session.run(sys.executable, str(ROOT / "tools" / "check_layering.py"))


def _install_all(session: nox.Session, *extra: str) -> None:
    session.install(*[arg for name in PACKAGES for arg in ("-e", str(PACKAGES_DIR / name))], *extra)


@nox.session(tags=["ci"])
@_pruned
def integration(session: nox.Session) -> None:
    """End-to-end across packages (CPU here; Ascend/GPU when MindSpore sees one)."""
    _install_all(session, *TEST_DEPS)
    session.run("pytest", str(ROOT / "integration"), *session.posargs, env=_env(session))


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
    """The main job on a fresh machine: install the packages and generate an image."""
    session.install(*[str(PACKAGES_DIR / name) for name in PACKAGES])
    out = os.environ.get("EMU3_DEMO_OUT", str(ROOT / "demo-out"))
    os.makedirs(out, exist_ok=True)
    session.run("emu3", "generate", "image", "a red circle", "--ratio", "1:1",
                "--out", os.path.join(out, "image.png"), env=_env(session))
