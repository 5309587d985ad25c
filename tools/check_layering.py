"""Check that packages depend only downward and declare exactly what they import.

For every package under packages/, from the imports of its src/ modules (`ast`, no import is
executed) and the dependencies of its pyproject.toml:

- a sibling (`emu3_*`) is imported only if declared, so emu3-vq imports no sibling at all;
- no source imports a test-only or heavy library (torch, transformers, ...); emu3-train may
  import mindone, if it declares it;
- every third-party module imported is declared: a module-level import by a runtime
  dependency, an import inside a function (a lazy one) by a runtime dependency or an extra;
- every declared dependency, runtime or extra, is imported somewhere in src/, except a sibling
  that holds data only: one that registers an `emu3.models` entry point (the default model,
  found through package metadata by `emu3_vq.defaults`, never imported);
- an extra installs something new: a distribution that the package or the siblings it
  requires already install is not an extra (`pip install 'emu3-lm[hub]'` must not be a step a
  user takes for nothing).

Import names are mapped to distribution names (`PIL` -> `pillow`, ...) by IMPORT_TO_DIST; a
module not in it is its own distribution name with `_` read as `-`. Exit status 1 with one
line per violation.
"""

from __future__ import annotations

import ast
import pathlib
import re
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
# Import name -> distribution name, where they differ.
IMPORT_TO_DIST = {
    "PIL": "pillow",
    "huggingface_hub": "huggingface-hub",
    "yaml": "pyyaml",
    "cv2": "opencv-python",
    "sklearn": "scikit-learn",
    "google": "protobuf",
}


def normalize(dist: str) -> str:
    """A distribution name as PEP 503 compares them: `Huggingface_Hub` -> `huggingface-hub`."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def requirement_name(req: str) -> str:
    """`"emu3-vq>=0.1,<0.2 ; python_version<'3.13'"` -> `"emu3-vq"`."""
    return normalize(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1))


def declared(pyproject: pathlib.Path) -> tuple[set[str], dict[str, set[str]]]:
    """(runtime dependencies, {extra: its dependencies}), as normalized distribution names."""
    project = tomllib.loads(pyproject.read_text())["project"]
    runtime = {requirement_name(r) for r in project.get("dependencies", [])}
    extras = {extra: {requirement_name(r) for r in reqs}
              for extra, reqs in project.get("optional-dependencies", {}).items()}
    return runtime, extras


def imported_modules(path: pathlib.Path):
    """(line, top-level module, lazy) of every absolute import; lazy: inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def visit(node: ast.AST, lazy: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield child.lineno, alias.name.split(".")[0], lazy
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                yield child.lineno, child.module.split(".")[0], lazy
            yield from visit(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                 ast.Lambda)))

    yield from visit(tree, False)


def dist_of(module: str) -> str:
    return normalize(IMPORT_TO_DIST.get(module, module))


def installed_with(name: str, dirs: dict[str, pathlib.Path]) -> dict[str, str]:
    """{distribution: the package of this repo that requires it} for what installing package
    `name` brings, through the runtime dependencies of it and of the siblings it requires."""
    out, todo = {}, [name]
    while todo:
        pkg = todo.pop()
        for dist in sorted(declared(dirs[pkg] / "pyproject.toml")[0]):
            if dist not in out:
                out[dist] = pkg
                if dist in dirs:
                    todo.append(dist)
    return out


def data_packages(dirs: dict[str, pathlib.Path]) -> set[str]:
    """Siblings that register an `emu3.models` entry point: data, depended on but not imported."""
    out = set()
    for name, pkg_dir in dirs.items():
        with open(pkg_dir / "pyproject.toml", "rb") as f:
            project = tomllib.load(f)["project"]
        if "emu3.models" in project.get("entry-points", {}):
            out.add(normalize(name))
    return out


def check_package(module: str, pkg_dir: pathlib.Path, siblings: set[str],
                  dirs: dict[str, pathlib.Path]) -> list[str]:
    runtime, extras = declared(pkg_dir / "pyproject.toml")
    in_extras = {dist: extra for extra, dists in extras.items() for dist in dists}
    problems, used = [], set()
    for path in sorted((pkg_dir / "src").rglob("*.py")):
        for lineno, top, lazy in imported_modules(path):
            where = f"{path.relative_to(ROOT)}:{lineno}"
            if top == module or top in sys.stdlib_module_names:
                continue
            dist = dist_of(top)
            used.add(dist)
            if top in FORBIDDEN:
                if not (top in ALLOWED_IF_DECLARED.get(module, ()) and dist in runtime):
                    problems.append(f"{where}: {module} imports {top} (test/bench only)")
                continue
            if dist in runtime:
                continue
            if top in siblings:
                problems.append(f"{where}: {module} imports {top}, which it does not declare")
            elif dist in in_extras and not lazy:
                problems.append(f"{where}: {module} imports {top} at module level, but {dist} is only in "
                                f"the extra [{in_extras[dist]}]: import it inside the function that needs it")
            elif dist not in in_extras:
                problems.append(f"{where}: {module} imports {top}, but {pkg_dir.name} does not declare "
                                f"{dist} (a dependency, or an extra for an import inside a function)")
    pyproject = (pkg_dir / "pyproject.toml").relative_to(ROOT)
    for dist in sorted(runtime - used - data_packages(dirs)):
        problems.append(f"{pyproject}: {pkg_dir.name} declares {dist}, "
                        f"but no module of its src/ imports it")
    for dist, extra in sorted(in_extras.items()):
        if dist not in used:
            problems.append(f"{pyproject}: the extra [{extra}] of {pkg_dir.name} holds {dist}, "
                            f"which no module of its src/ imports")
    brought = installed_with(pkg_dir.name, dirs)
    for extra, dists in sorted(extras.items()):
        if dists and dists <= set(brought):
            via = ", ".join(f"{d} (with {brought[d]})" for d in sorted(dists))
            problems.append(f"{pyproject}: the extra [{extra}] of {pkg_dir.name} installs nothing new: "
                            f"{via}; declare what src/ imports as a dependency and drop the extra")
    return problems


def main() -> int:
    packages = {p.parent.name.replace("-", "_"): p.parent for p in ROOT.glob("packages/*/pyproject.toml")}
    dirs = {normalize(d.name): d for d in packages.values()}
    problems = []
    for module, pkg_dir in sorted(packages.items()):
        problems += check_package(module, pkg_dir, set(packages) - {module}, dirs)
    for line in problems:
        print(line)
    print(f"layering: {len(packages)} packages checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
