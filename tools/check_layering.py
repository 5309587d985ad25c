"""Check that packages depend only downward.

For every module under packages/*/src, each import of another `emu3_*` package must be one
that the importing package declares in its pyproject.toml dependencies (so emu3-vq imports
no sibling at all), and no package source imports a test-only or heavy library (emu3-train may import mindone, if it
declares it).
Exit status 1 with one line per violation.
"""

from __future__ import annotations

import ast
import pathlib
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Never imported by package source: the oracle and the heavy stack we keep out of installs.
FORBIDDEN = {"torch", "transformers", "mindone", "torchvision", "accelerate"}
# The one exception the mission allows: emu3-train may use mindone's training pieces, if it
# declares the dependency (it does not today: docs/training.md says why).
ALLOWED_IF_DECLARED = {"emu3_train": {"mindone"}}


def declared(pyproject: pathlib.Path) -> set[str]:
    deps = tomllib.loads(pyproject.read_text())["project"].get("dependencies", [])
    names = set()
    for req in deps:
        name = req.split(";")[0]
        for sep in "[<>=!~ ":
            name = name.split(sep)[0]
        names.add(name.strip().replace("-", "_"))
    return names


def imported_modules(path: pathlib.Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def main() -> int:
    packages = {p.parent.name.replace("-", "_"): p.parent for p in ROOT.glob("packages/*/pyproject.toml")}
    problems = []
    for module, pkg_dir in sorted(packages.items()):
        allowed = declared(pkg_dir / "pyproject.toml") | {module}
        for path in sorted((pkg_dir / "src").rglob("*.py")):
            for lineno, top in imported_modules(path):
                where = f"{path.relative_to(ROOT)}:{lineno}"
                if top in packages and top not in allowed:
                    problems.append(f"{where}: {module} imports {top}, which it does not declare")
                if top in FORBIDDEN and not (top in ALLOWED_IF_DECLARED.get(module, ()) and top in allowed):
                    problems.append(f"{where}: {module} imports {top} (test/bench only)")
    for line in problems:
        print(line)
    print(f"layering: {len(packages)} packages checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
