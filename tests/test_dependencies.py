"""Every third-party module the package, the Space, the tests and the benchmarks import is a declared dependency,
not one that happens to arrive with another package (and may leave with its next release): the package's own
imports in `dependencies` (the Space's in the `space` extra), the tests' and benchmarks' in any extra.

CI installs exactly the README's command into a fresh virtual environment, which catches an import that nothing
installs (kaggle 2.2's undeclared `six`); this test also catches one that is only installed by chance.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from conftest import REPO_ROOT

# Imported only where the code checks first whether it is there (try/except ImportError), or by a script that
# runs in an environment of its own: benchmarks/optimum_worker.py (optimum pins transformers 4).
SEPARATE_ENVIRONMENT = {REPO_ROOT / "benchmarks" / "optimum_worker.py"}
LOCAL = {"distrinews", "app", "conftest", *(path.stem for folder in ("tests", "benchmarks")
                                            for path in (REPO_ROOT / folder).rglob("*.py"))}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> dict[str, set[str]]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    return {group: {_canonical(re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0]) for spec in specs}
            for group, specs in groups.items()}


def _guarded(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside a try whose handlers catch ImportError: optional on purpose."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(handler.type, ast.Name) and handler.type.id in ("ImportError", "ModuleNotFoundError")
                for handler in node.handlers):
            lines |= {inner.lineno for statement in node.body for inner in ast.walk(statement)
                      if isinstance(inner, (ast.Import, ast.ImportFrom))}
    return lines


# The Space's web layer lives in the package but only the Space imports it: its imports are the `space` extra's.
SPACE_WEB_LAYER = REPO_ROOT / "distrinews" / "serving" / "web"
# The sweeps' imports (Optuna) are the `sweep` extra's: a run without a sweep never imports them.
SWEEP = REPO_ROOT / "distrinews" / "sweep"


def _third_party_imports(folder: str) -> dict[str, Path]:
    found = {}
    for path in sorted((REPO_ROOT / folder).rglob("*.py")):
        if path in SEPARATE_ENVIRONMENT or (folder == "distrinews" and {SPACE_WEB_LAYER, SWEEP} & set(path.parents)):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        guarded = _guarded(tree)
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in guarded:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names}:
                if top not in sys.stdlib_module_names and top not in LOCAL and top != "__future__":
                    found.setdefault(top, path)
    return found


@functools.cache
def _distributions(module: str) -> frozenset[str]:
    """The distributions that install ``module`` here; one not installed in this environment (an extra the
    README's test install leaves out, e.g. `bench`) is taken to be named like it."""
    return frozenset(_canonical(name) for name in _installed().get(module, [module]))


@functools.cache
def _installed() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def test_every_import_is_a_declared_dependency():
    declared = _declared()
    everything = set().union(*declared.values())
    space = declared["dependencies"] | declared["space"]
    where = {"distrinews": declared["dependencies"], "distrinews/serving/web": space, "app": space,
             "distrinews/sweep": declared["dependencies"] | declared["sweep"],
             "tests": everything, "benchmarks": everything}
    undeclared = [f"{module} (imported by {path.relative_to(REPO_ROOT)}; installed as {sorted(_distributions(module))})"
                  for folder, allowed in where.items() for module, path in _third_party_imports(folder).items()
                  if not _distributions(module) & allowed]
    assert not undeclared, "declare these in pyproject.toml: " + "; ".join(undeclared)


def test_the_files_conftest_orders_first_exist():
    from conftest import LONGEST_FILES_FIRST, REPO_ROOT

    missing = [name for name in LONGEST_FILES_FIRST if not (REPO_ROOT / "tests" / name).is_file()]
    assert not missing, f"tests/conftest.py orders files that are gone: {missing}"
