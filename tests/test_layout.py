"""The house rules of the layout: imports point one way, from the CLI down to senet_core."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A room may import the rooms after it in this order, never those before it.
ORDER = ["ablations.cli", "ablations.reporting", "ablations.sweep", "ablations.training"]


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def room(module: str) -> str | None:
    return next((r for r in ORDER if module == r or module.startswith(r + ".")), None)


@pytest.mark.parametrize("path", sorted((ROOT / "senet_core").rglob("*.py")), ids=lambda p: p.name)
def test_senet_core_never_imports_the_harness(path):
    assert not [m for m in imports(path) if m.split(".")[0] in ("ablations", "mlflow", "optuna", "yaml", "pandas")]


@pytest.mark.parametrize("path", sorted((ROOT / "ablations").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_rooms_import_only_the_rooms_below_them(path):
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    mine = room(module)
    rank = ORDER.index(mine) if mine else len(ORDER)  # shared vocabulary sits below every room
    for imported in imports(path):
        theirs = room(imported)
        if theirs is not None and theirs != mine:
            assert ORDER.index(theirs) > rank, f"{module} imports {imported}"
