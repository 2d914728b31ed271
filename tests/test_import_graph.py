"""Imports flow one way: no module imports a higher pipeline stage, and no two modules import
each other (directly or round a loop). Read statically from the source, so imports inside
functions count as much as those at the top of a file.

Stage order (the developers' guide): utils, errors, paths < dataset, imaging < planning <
preprocessing < training < inference < evaluation < run < experiments < cli, demo, api. No arrow
runs up: what two stages share lives in the lower one (``imaging`` holds the array operations
planning predicts and preprocessing applies), and what combines two stages lives above both
(``run`` trains a fold, then validates it with the predictor and the evaluation).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medseg_auto"
STAGE_RANK = {
    "": 0, "utils": 0, "errors": 0, "paths": 0, "dataset": 1, "imaging": 1, "planning": 2, "preprocessing": 3,
    "training": 4, "inference": 5, "evaluation": 6, "run": 7, "experiments": 8, "cli": 9, "demo": 9, "api": 9,
    "__main__": 10,
}

def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def import_graph() -> dict[str, set[str]]:
    """``module -> modules of the package it imports`` (``from a.b import c`` names ``a.b``,
    or ``a.b.c`` when that is a module)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                           for alias in node.names]
            graph[name] |= {target for target in targets if target in modules and target != name}
    return graph


def test_every_stage_has_a_rank():
    unranked = sorted({stage_of(module) for module in import_graph()} - set(STAGE_RANK))
    assert unranked == [], f"new top-level stage(s) {unranked}: give them a place in STAGE_RANK"


def test_no_module_imports_a_higher_stage():
    upward = sorted(
        (source, target) for source, targets in import_graph().items() for target in targets
        if STAGE_RANK[stage_of(target)] > STAGE_RANK[stage_of(source)]
    )
    assert upward == [], "lower stage imports a higher one: " + ", ".join(f"{a} -> {b}" for a, b in upward)


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [module, target] if target in path else [module, target])
            elif target not in state:
                visit(target, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)
