"""The shape of the code (issue 13): the operator package is the cluster controller alone,
keeps no module-level mutable state, and no function anywhere is too long to hold.

Import arrows between packages (layers, circles) are checked by `lint-imports` in the lint
step, with the contracts in pyproject.toml; the probe here runs the real imports.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "operator" / "finetune_operator"
ML_STACK = ("finetune_trainer", "torch", "transformers", "peft", "datasets", "accelerate")
MAX_FUNCTION_LINES = 80

PROBE = """
import importlib, json, pkgutil, sys
import finetune_operator
names = [m.name for m in pkgutil.walk_packages(finetune_operator.__path__, "finetune_operator.")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "loaded": sorted(sys.modules)}))
"""


def test_importing_every_operator_module_leaves_out_the_ml_stack() -> None:
    """In a fresh interpreter, so other tests' imports cannot mask an import."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    expected = {f"finetune_operator.{p.stem}" for p in OPERATOR.glob("*.py")} - {
        "finetune_operator.__init__"
    }
    assert set(result["modules"]) == expected  # every module was imported
    loaded = {name.split(".")[0] for name in result["loaded"]}
    assert loaded.isdisjoint(ML_STACK), sorted(loaded & set(ML_STACK))


BUILTIN_CONTAINERS = frozenset({"dict", "list", "set"})
COLLECTIONS = frozenset({"defaultdict", "OrderedDict", "Counter", "deque"})
# Series and registries keep values too: they live in metrics.Instruments, per process.
PROMETHEUS = frozenset({"CollectorRegistry", "Counter", "Gauge", "Histogram", "Summary"})


def _container_calls(tree: ast.Module) -> set[str]:
    """Call names that build mutable state in this module: containers, and collections'
    or prometheus_client's classes where the module imports them from there."""
    names = set(BUILTIN_CONTAINERS)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "collections":
            names |= {a.asname or a.name for a in node.names if a.name in COLLECTIONS}
        if isinstance(node, ast.Import) and any(a.name == "collections" for a in node.names):
            names |= COLLECTIONS  # collections.X
        if isinstance(node, ast.ImportFrom) and node.module == "prometheus_client":
            names |= {a.asname or a.name for a in node.names if a.name in PROMETHEUS}
    return names


def _mutable(value: ast.expr | None, calls: set[str]) -> bool:
    if isinstance(value, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp | ast.SetComp):
        return True
    if isinstance(value, ast.Call):
        func = value.func
        if isinstance(func, ast.Name):
            return func.id in calls
        owner = func.value if isinstance(func, ast.Attribute) else None
        return isinstance(owner, ast.Name) and owner.id == "collections" and func.attr in calls
    return False


def test_the_operator_keeps_no_module_level_mutable_state() -> None:
    """Caches, locks and queues live in the ReconcileState created at start-up."""
    found = []
    for path in sorted(OPERATOR.glob("*.py")):
        tree = ast.parse(path.read_text())
        calls = _container_calls(tree)
        for node in tree.body:
            value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
            if _mutable(value, calls):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)[:70]}")
        found += [
            f"{path.name}:{n.lineno}: global {', '.join(n.names)}"
            for n in ast.walk(tree)
            if isinstance(n, ast.Global)
        ]
    assert found == []


def test_no_function_is_longer_than_80_lines() -> None:
    long = []
    for folder in ("crds", "operator", "cli", "trainer_image"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {lines}")
    assert long == []
