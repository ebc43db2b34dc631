"""The package's import graph: every module imports on its own, no two modules need each other
(counting imports inside functions too, so a cycle cannot hide in a late import), and the
sub-packages form layers that only import downwards."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "nbtl_search"
# Bottom to top: a module may import its own layer and the layers below it, never one above.
# study/ and store/ share the bottom floor but do not know each other.
LAYERS = [("study", "store"), ("probe",), ("run",), ("final",), ("ui",), ("verbs",), ("", "cli")]
APART = {("study", "store"), ("store", "study")}


def _dotted(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_dotted(p) for p in PACKAGE.rglob("*.py") if p.stem != "__main__")


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The nbtl_search modules an ImportFrom names (package `from x import mod` included)."""
    if node.level:
        package = (
            module.split(".")
            if (ROOT / module.replace(".", "/") / "__init__.py").exists()
            else module.split(".")[:-1]
        )
        base = ".".join(
            package[: len(package) - node.level + 1] + ([node.module] if node.module else [])
        )
    else:
        base = node.module or ""
    if not base.startswith("nbtl_search"):
        return []
    names = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
    return names or ([base] if base in MODULES else [])


def imports_of(module: str) -> set[str]:
    """nbtl_search modules that `module` imports, at any depth of its code."""
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            found.update(_resolve(module, node))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in MODULES)
    return found - {module}


def layer(module: str) -> tuple[int, str]:
    """(floor, room): the sub-package (or top-level module) a module lives in, and its floor."""
    parts = module.split(".")
    room = parts[1] if len(parts) > 1 else ""
    return next(i for i, floor in enumerate(LAYERS) if room in floor), room


GRAPH = {m: imports_of(m) for m in MODULES}


def test_the_import_graph_has_no_cycle() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if state.get(nxt) is None:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in MODULES:
        if module not in state:
            visit(module, [module])
    assert "nbtl_search.verbs" in GRAPH["nbtl_search.cli"]


def test_the_sub_packages_import_only_downwards() -> None:
    wrong = []
    for module, deps in GRAPH.items():
        floor, room = layer(module)
        for dep in deps:
            dep_floor, dep_room = layer(dep)
            if dep_floor > floor or (room, dep_room) in APART:
                wrong.append(f"{module} ({room or 'top'}) imports {dep} ({dep_room or 'top'})")
    assert not wrong, "\n".join(wrong)


def test_every_sub_package_says_what_it_holds() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 80, f"{init.relative_to(ROOT)}: a one-paragraph docstring"


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_on_its_own(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_cli_loads_only_the_standard_library_until_a_verb_acts() -> None:
    """`--help` and argument errors must not wait for torch, timm or optuna."""
    code = (
        "import sys, nbtl_search.cli; nbtl_search.cli.build_parser(); bad = [m for m in ('torch', "
        "'timm', 'optuna', 'pandas', 'sqlalchemy') if m in sys.modules]; print(bad); "
        "sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_worker_does_not_load_the_analysis_stack() -> None:
    code = (
        "import sys, nbtl_search.verbs.search, nbtl_search.run.worker, nbtl_search.run.preflight; "
        "bad = [m for m in ('analysis', 'pandas', 'plotly') if m in sys.modules]; print(bad); "
        "sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_wheel_lists_every_package() -> None:
    """pyproject lists the packages by hand (studies/ travels as nbtl_search.studies): a new
    sub-package missing from that list would be left out of a plain `pip install .`."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("nbtl_search", "trainer", "analysis")
        for p in (ROOT / top).rglob("__init__.py")
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
