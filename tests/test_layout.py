"""The library's tree reads in the order data flows: no package imports one on a higher floor.

Floors, lowest first: the ground modules (config, columns, io, sequences), then synthetic, data,
quality, features, models, evaluation, serving, pipeline, and the CLI on top. A module may import
its own floor and those below it. The library never imports the orchestration layers
(``prefect``, ``tasks``, ``flows``), and only ``quality/`` imports the ``expectations`` suites.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "seqrec"
FLOORS = {name: 0 for name in ("config", "columns", "io", "parallel", "sequences", "__init__")}
FLOORS |= {name: i for i, name in enumerate(
    ("synthetic", "data", "quality", "features", "models", "evaluation", "serving", "pipeline", "cli"), start=1)}
FORBIDDEN = ("prefect", "tasks", "flows")
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 40


def floor_of(module: str) -> int:
    """Return the floor of a dotted ``seqrec.…`` module name (its first component below seqrec)."""
    top = module.split(".")[1] if "." in module else "__init__"
    if top not in FLOORS:
        raise AssertionError(f"module {module}: package '{top}' has no floor; add it to FLOORS in the order data flows")
    return FLOORS[top]


def imported_modules(source: str) -> list[tuple[int, str]]:
    """Return (line, dotted module) of every import in a source file, nested and TYPE_CHECKING ones included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "seqrec":  # from seqrec import io, columns
                found += [(node.lineno, f"seqrec.{a.name}") for a in node.names]
    return found


def module_name(path: Path) -> str:
    """Return the dotted name of a file under src/seqrec."""
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_files() -> list[Path]:
    """Return every Python file of the library."""
    return sorted(SRC.rglob("*.py"))


def violations(me: str, source: str, rel: str) -> list[str]:
    """Return one line per import in module ``me`` (file ``rel``) that breaks the floor order or the layer rules."""
    out = []
    for line, mod in imported_modules(source):
        root = mod.split(".")[0]
        if root in FORBIDDEN:
            out.append(f"{rel}:{line} imports {mod}: the library never imports the orchestration layer")
        elif root == "expectations" and not me.startswith("seqrec.quality"):
            out.append(f"{rel}:{line} imports {mod}: only seqrec.quality runs the suites")
        elif root == "seqrec" and mod != "seqrec" and floor_of(mod) > floor_of(me):
            out.append(f"{rel}:{line}: {me} (floor {floor_of(me)}) imports {mod} (floor {floor_of(mod)}), a higher floor")
    return out


def test_no_module_imports_a_higher_floor_or_the_orchestration_layer():
    bad = [v for p in library_files() for v in violations(module_name(p), p.read_text(), str(p.relative_to(ROOT)))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source, expected", [
    ("from seqrec.serving.recommend import load_model\n", "a higher floor"),  # models -> serving: up
    ("from seqrec import pipeline\n", "a higher floor"),
    ("import prefect\n", "orchestration layer"),
    ("def f():\n    from tasks.common import CACHE\n", "orchestration layer"),  # lazy imports count too
    ("from expectations import suites\n", "only seqrec.quality"),
])
def test_the_floor_check_catches_each_kind_of_violation(source, expected):
    found = violations("seqrec.models.probe", source, "probe.py")
    assert len(found) == 1 and expected in found[0], found


def test_every_package_has_a_floor_and_a_docstring():
    packages = sorted(p.parent for p in SRC.glob("*/__init__.py"))
    assert {p.name for p in packages} <= set(FLOORS), "a package without a floor"
    for p in packages:
        doc = ast.get_docstring(ast.parse((p / "__init__.py").read_text()))
        assert doc, f"{p / '__init__.py'} needs a one-line docstring saying what the package holds"


def code_files() -> list[Path]:
    """Return the Python files of the library and of the orchestration layers."""
    return library_files() + sorted(p for d in ("tasks", "flows", "expectations", "deployments")
                                    for p in (ROOT / d).rglob("*.py"))


def test_files_and_functions_stay_small():
    long_files = [f"{p.relative_to(ROOT)}: {n} lines" for p in code_files()
                  if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    long_functions = []
    for p in code_files():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not long_files and not long_functions, "\n".join(long_files + long_functions)


def test_the_floor_check_allows_imports_down_and_sideways():
    source = "from seqrec.sequences import PAD\nfrom seqrec.models.base import Recommender\nfrom seqrec import columns as C\n"
    assert violations("seqrec.models.probe", source, "probe.py") == []


def test_tasks_are_thin_wrappers_of_pipeline_functions():
    """Every Prefect task calls the library and publishes: at most 8 lines, and no loops or comprehensions."""
    for path in sorted((ROOT / "tasks").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and any("task" in ast.unparse(d) for d in node.decorator_list):
                logic = [n for n in ast.walk(node) if isinstance(n, (ast.For, ast.While, ast.ListComp, ast.DictComp, ast.If))]
                assert node.end_lineno - node.lineno + 1 <= 8 and not logic, f"{path.name}:{node.lineno} {node.name} holds logic"
