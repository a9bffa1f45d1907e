"""docs/architecture.md's import rules, checked: each package imports only the packages below it, es/ and rl/
never import each other, tasks and policy never import each other, and there are no cycles.

Imports under `if TYPE_CHECKING:` are annotations, not dependencies, and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

ESFT = Path(__file__).resolve().parents[1] / "esft"

#: bottom-up, as in docs/architecture.md: a unit may import only units listed before it
LAYERS = [
    {"errors", "resources"}, {"core"}, {"storage"}, {"tasks"}, {"policy"}, {"es", "rl", "evaluation"},
    {"backends"}, {"models"}, {"tracking"}, {"run"}, {"distributed"}, {"commands"}, {"report"}, {"cli"}, {"__main__"},
]
LEVEL = {unit: index for index, units in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str:
    """`esft.es.trainer` -> `es`, `esft.policy` -> `policy`."""
    return module.split(".")[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    typing_only = {id(inner) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)
                   for statement in node.body for inner in ast.walk(statement)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("esft."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("esft."))
    return found


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in ESFT.rglob("*.py"):
        relative = path.relative_to(ESFT.parent).with_suffix("")
        unit = _unit(".".join(relative.parts)) if len(relative.parts) > 1 else relative.parts[0]
        if relative.parts == ("esft", "__init__"):
            continue
        targets = {_unit(m) for m in _imports(path)} - {unit}
        edges.setdefault(unit, set()).update(targets)
    return edges


def test_every_unit_has_a_layer():
    assert set(_edges()) - set(LEVEL) == set(), "add the new package to LAYERS and to docs/architecture.md"


def test_packages_import_only_downwards():
    edges = _edges()
    upward = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets if LEVEL[b] > LEVEL[a])
    sideways = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets if LEVEL[b] == LEVEL[a])
    assert upward == [], "an import points up the layers of docs/architecture.md"
    assert sideways == [], "es/, rl/ and evaluation/ are siblings: what two of them share belongs in core/"


def test_the_two_rules_that_matter_most():
    edges = _edges()
    assert "rl" not in edges["es"] and "es" not in edges["rl"]
    assert "policy" not in edges["tasks"] and "tasks" not in edges["policy"]
