"""The house rules of the layout: imports point one way, from the CLI down to senet_core."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A room may import the rooms after it in this order, never those before it; rooms of one rank are siblings and never
# import each other. The shared vocabulary (config, errors, paths, tracking, ...) ranks below every room.
ORDER = [("ablations.cli",), ("ablations.reporting",), ("ablations.sweep",), ("ablations.training",),
         ("ablations.study", "ablations.data")]  # fmt: skip
ROOMS = [r for rank in ORDER for r in rank]
# The package itself is the notebooks' entry (`from ablations import results`): it sits on top with the CLI, and
# imports the rooms only inside its functions, so that `import ablations` stays cheap.
FACADE = "ablations"


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def room(module: str) -> str | None:
    return next((r for r in ROOMS if module == r or module.startswith(r + ".")), None)


def rank(room_name: str | None) -> int:
    return next((i for i, names in enumerate(ORDER) if room_name in names), len(ORDER))


@pytest.mark.parametrize("path", sorted((ROOT / "senet_core").rglob("*.py")), ids=lambda p: p.name)
def test_senet_core_never_imports_the_harness(path):
    assert not [m for m in imports(path) if m.split(".")[0] in ("ablations", "mlflow", "optuna", "yaml", "pandas")]


@pytest.mark.parametrize("path", sorted((ROOT / "ablations").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_rooms_import_only_the_rooms_below_them(path):
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    mine = room(module) if module != FACADE else ORDER[0][0]
    for imported in imports(path):
        theirs = room(imported)
        if theirs is not None and theirs != mine:
            assert rank(theirs) > rank(mine), f"{module} imports {imported}"


def test_no_import_loops():
    """No module imports itself back through others: at import time, inside functions or for type checking."""
    graph = {}
    for path in (ROOT / "ablations").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[module] = {m for m in imports(path) if m.startswith("ablations.") and m != module}
    done: set[str] = set()

    def visit(node: str, chain: tuple[str, ...]) -> None:
        assert node not in chain, f"import loop: {' -> '.join((*chain[chain.index(node) :], node))}"
        if node in done or node not in graph:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, (*chain, node))
        done.add(node)

    for module in sorted(graph):
        visit(module, ())


@pytest.mark.parametrize("path", sorted((ROOT / "ablations" / "reporting").rglob("*.py")), ids=lambda p: p.name)
def test_reports_read_the_ledger_through_the_read_side_only(path):
    """The read side never goes through the controller, the workers or the ledger's writers."""
    sweep = [m for m in imports(path) if m.startswith("ablations.sweep")]
    assert all(m == "ablations.sweep.status" for m in sweep), sweep


def test_modules_are_readable_at_once():
    """Every module of the harness and the model library fits in one sitting."""
    modules = [*(ROOT / "ablations").rglob("*.py"), *(ROOT / "senet_core").rglob("*.py")]
    lines = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in modules}
    long = {path: n for path, n in lines.items() if n > 450}
    assert not long
