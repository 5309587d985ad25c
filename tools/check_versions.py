"""Check what a release publishes about the packages, before any wheel is built.

    python tools/check_versions.py      # also run by `nox -s release`

- versions: every range by which a package requires a sibling (`emu3-vq>=0.1,<0.2`, in its
  dependencies or an extra) admits that sibling's version in this tree, the `__version__` of
  the file `[tool.hatch.version] path` names (what hatchling writes into the wheel);
- project URLs: every package has Homepage, Documentation, Source and Issues, and every URL
  starts with the repository of the root pyproject.toml (`[tool.emu3] repository`, written
  once there); a URL into the tree (`.../blob/main/PATH`, `.../tree/main/PATH`) names a file
  or folder that exists;
- READMEs: a package README is shown on the package index, where a relative link leads
  nowhere, so every link in it is absolute (or `#an-anchor`), and one into the repository
  names a path that exists;
- classifiers: one `Programming Language :: Python :: 3.X` per minor version that
  `requires-python` admits, and no `License ::` classifier (the license is the SPDX
  expression of `license`; the index refuses an upload carrying both).

Exit status 1 with one line per problem.
"""

from __future__ import annotations

import pathlib
import re
import sys

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
REQUIRED_URLS = ("Homepage", "Documentation", "Source", "Issues")
# hatchling's default pattern for `[tool.hatch.version] path`
VERSION_LINE = re.compile(r"""(?im)^(?:__version__|VERSION)\s*=\s*(['"])v?(?P<version>.+?)\1""")
# Markdown links and images `[text](target "title")`, reference definitions `[x]: target`,
# and HTML `href=`/`src=`.
LINKS = [re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)"),
         re.compile(r"(?m)^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)"),
         re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""")]
CODE = [re.compile(r"(?ms)^\s*(```|~~~).*?^\s*\1[^\n]*$"),  # fenced blocks
        re.compile(r"(?m)^(?: {4}|\t).*$"),                  # indented blocks
        re.compile(r"(`+).+?\1", re.DOTALL)]                      # inline code


def load(path: pathlib.Path) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def repository() -> str:
    return load(ROOT / "pyproject.toml")["tool"]["emu3"]["repository"].rstrip("/")


def packages() -> dict[str, pathlib.Path]:
    """{distribution name: package folder}"""
    return {load(p)["project"]["name"]: p.parent for p in sorted(ROOT.glob("packages/*/pyproject.toml"))}


def version_of(pkg_dir: pathlib.Path) -> str:
    """The version hatchling gives the wheel: `__version__` of `[tool.hatch.version] path`."""
    path = pkg_dir / load(pkg_dir / "pyproject.toml")["tool"]["hatch"]["version"]["path"]
    m = VERSION_LINE.search(path.read_text(encoding="utf-8"))
    if not m:
        raise SystemExit(f"{path.relative_to(ROOT)}: no __version__ = '...' line")
    return m.group("version")


def check_versions(pkgs: dict[str, pathlib.Path]) -> list[str]:
    versions = {canonicalize_name(name): Version(version_of(d)) for name, d in pkgs.items()}
    problems = []
    for name, pkg_dir in pkgs.items():
        project = load(pkg_dir / "pyproject.toml")["project"]
        reqs = [(r, "dependencies") for r in project.get("dependencies", [])]
        reqs += [(r, f"extra [{extra}]") for extra, rs in project.get("optional-dependencies", {}).items()
                 for r in rs]
        for text, where in reqs:
            req = Requirement(text)
            sibling = canonicalize_name(req.name)
            if sibling in versions and not req.specifier.contains(versions[sibling], prereleases=True):
                problems.append(f"{name}: {where} require {text!r}, but {req.name} in this tree is "
                                f"{versions[sibling]}: widen the range or release {name} too")
    return problems


def tree_path(url: str, repo: str) -> str | None:
    """`REPO/blob/main/a/b.md` -> `a/b.md`; `REPO` or `REPO/issues` -> None (not a tree path)."""
    m = re.match(re.escape(repo) + r"/(?:blob|tree)/main(?:/([^#?]*))?", url)
    return (m.group(1) or "").rstrip("/") if m else None


def check_url(url: str, repo: str, where: str) -> list[str]:
    if not (url == repo or url.startswith((repo + "/", repo + "#"))):
        return [f"{where}: {url} does not start with the repository {repo} (pyproject.toml [tool.emu3])"]
    path = tree_path(url, repo)
    if path is not None and not (ROOT / path).exists():
        return [f"{where}: {url} names {path}, which does not exist in the tree"]
    return []


def check_urls(pkgs: dict[str, pathlib.Path], repo: str) -> list[str]:
    problems = []
    for name, pkg_dir in pkgs.items():
        urls = load(pkg_dir / "pyproject.toml")["project"].get("urls", {})
        problems += [f"{name}: [project.urls] has no {key}" for key in REQUIRED_URLS if key not in urls]
        for key, url in urls.items():
            problems += check_url(url, repo, f"{name}: [project.urls] {key}")
    return problems


def readme_links(text: str) -> list[tuple[int, str]]:
    """(line, target) of every link outside code."""
    for code in CODE:  # blank out code, keeping the line numbers
        text = code.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    return sorted((text.count("\n", 0, m.start(1)) + 1, m.group(1))
                  for rx in LINKS for m in rx.finditer(text))


def absolute(target: str, base: pathlib.Path, repo: str) -> str:
    """The link on the repository's site for a relative `target` of a file in `base`."""
    path, _, anchor = target.partition("#")
    full = (base / path).resolve()
    kind = "tree" if full.is_dir() else "blob"
    return f"{repo}/{kind}/main/{full.relative_to(ROOT).as_posix()}" + (f"#{anchor}" if anchor else "")


def check_readmes(pkgs: dict[str, pathlib.Path], repo: str) -> list[str]:
    problems = []
    for pkg_dir in pkgs.values():
        readme = pkg_dir / load(pkg_dir / "pyproject.toml")["project"].get("readme", "README.md")
        rel = readme.relative_to(ROOT)
        for line, target in readme_links(readme.read_text(encoding="utf-8")):
            if target.startswith("#"):
                continue
            if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                problems.append(f"{rel}:{line}: relative link {target!r} leads nowhere on the package index; "
                                f"write {absolute(target, readme.parent, repo)}")
            elif target.startswith(repo):
                problems += check_url(target, repo, f"{rel}:{line}")
    return problems


def check_classifiers(pkgs: dict[str, pathlib.Path]) -> list[str]:
    problems = []
    for name, pkg_dir in pkgs.items():
        project = load(pkg_dir / "pyproject.toml")["project"]
        classifiers = project.get("classifiers", [])
        python = SpecifierSet(project.get("requires-python", ""))
        want = {f"Programming Language :: Python :: 3.{minor}" for minor in range(30)
                if python.contains(f"3.{minor}")}
        have = {c for c in classifiers if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)}
        if want != have:
            problems.append(f"{name}: requires-python {str(python)!r} admits {sorted(want)}, the classifiers "
                            f"say {sorted(have)}")
        problems += [f"{name}: classifier {c!r}: the license is `license` (an SPDX expression) alone"
                     for c in classifiers if c.startswith("License ::")]
    return problems


def main() -> int:
    pkgs, repo = packages(), repository()
    problems = (check_versions(pkgs) + check_urls(pkgs, repo) + check_readmes(pkgs, repo)
                + check_classifiers(pkgs))
    for line in problems:
        print(line)
    print(f"versions: {len(pkgs)} packages ({', '.join(f'{n} {version_of(d)}' for n, d in pkgs.items())}), "
          f"repository {repo}; {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
