"""The package's floors, read from the source with ``ast`` (nothing of medmm is imported).

ARCHITECTURE.md describes the floors. These tests fail when an import crosses a floor the
wrong way, when module-top imports form a cycle, or when too many medmm imports hide
inside functions. The self-checks at the bottom feed the checkers a made-up package so
a checker that stopped reporting would fail too.
"""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "medmm"

# Floor of each top-level package, bottom up. A module may import its own floor and any
# floor below. Packages on one floor are siblings and may import each other.
FLOORS: dict[str, int] = {
    "config": 0,
    "console": 0,
    "io": 1,
    "cohort": 2,
    "data": 3,
    "models": 4,
    "losses": 4,
    "metrics": 4,
    "retrieval": 4,
    "training": 5,
    "tracking": 5,
    "workflows": 6,
    "pipelines": 7,
    "demo": 7,
    "cli": 8,
}

# demo sits beside pipelines but is not its sibling: only the demo commands import it,
# and demo imports no pipeline.
DEMO_IMPORTERS = ("medmm.pipelines.make_demo",)  # prefix: make_demo, make_demo_pathology, ...
NOT_SIBLINGS = {("demo", "pipelines"), ("pipelines", "demo")}

# Imports from one workflow folder into another that are allowed, each with its reason.
CROSS_WORKFLOW_ALLOWED: dict[str, str] = {
    "medmm.workflows.pretrained": "the shared loader of pretrained models, used by every downstream workflow",
    "medmm.workflows.contrastive.config": "schema of a contrastive pretraining run, read back when a "
    "downstream workflow rebuilds a pretrained model",
    "medmm.workflows.ptunifier.config": "schema of a PTUnifier pretraining run, read back when a "
    "downstream workflow rebuilds a pretrained model",
}

# Module-top imports form no cycle. Cycles closed by an import inside a function are
# accepted only when listed here (as the set of modules in the cycle), with the reason.
ALLOWED_FUNCTION_LEVEL_CYCLES: dict[frozenset[str], str] = {}

MAX_FUNCTION_LEVEL_SHARE = 0.15


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    in_function: bool = False
    type_checking: bool = False  # under ``if TYPE_CHECKING:``: never executed


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_imports(node: ast.AST, in_function: bool = False, type_checking: bool = False):
    """(import node, in_function, type_checking) for every import under ``node``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function, type_checking
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _walk_imports(child, True, type_checking)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk_imports(ast.Module(body=[stmt], type_ignores=[]), in_function, True)
            for stmt in child.orelse:
                yield from _walk_imports(ast.Module(body=[stmt], type_ignores=[]), in_function, type_checking)
        else:
            yield from _walk_imports(child, in_function, type_checking)


def collect_imports(root: Path = PACKAGE_ROOT) -> list[Import]:
    """Every import of a module of the package at ``root`` made by a module of it."""
    package = root.name
    files = sorted(root.rglob("*.py"))
    modules = {module_name(path, root) for path in files}
    imports: list[Import] = []
    for path in files:
        importer = module_name(path, root)
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, in_function, type_checking in _walk_imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base_parts = importer.split(".") if is_package else importer.split(".")[:-1]
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.append(submodule if submodule in modules else base)
            for target in dict.fromkeys(targets):
                if target == package or target.startswith(package + "."):
                    imports.append(Import(importer, target, node.lineno, in_function, type_checking))
    return imports


def floor_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def workflow_of(module: str) -> str | None:
    """The workflow folder a module belongs to (``medmm.workflows.report.run`` -> ``report``);
    None outside workflow folders (``medmm.workflows.pretrained`` is shared)."""
    parts = module.split(".")
    if len(parts) > 3 and parts[1] == "workflows":
        return parts[2]
    return None


def _floor_rule_broken(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported``; None when it may."""
    a, b = floor_of(importer), floor_of(imported)
    if not b:
        return None
    if not a:
        return f"the package root may not import floor {b}"
    for floor in (a, b):
        if floor not in FLOORS:
            return f"floor {floor} is not in the floors table"
    if b == "demo" and a != "demo":
        if importer.startswith(DEMO_IMPORTERS):
            return None
        return f"floor {a} may not import floor demo: only {DEMO_IMPORTERS[0]}* may"
    if a != b and (FLOORS[b] > FLOORS[a] or (FLOORS[b] == FLOORS[a] and (a, b) in NOT_SIBLINGS)):
        return f"floor {a} may not import floor {b}"
    wa, wb = workflow_of(importer), workflow_of(imported)
    if wa and wb and wa != wb and imported not in CROSS_WORKFLOW_ALLOWED:
        return f"workflow {wa} may not import workflow {wb}"
    return None


def floor_violations(imports: list[Import]) -> list[str]:
    """'importer -> imported (why) [line N]' for every import that breaks the floors."""
    found = []
    for imp in imports:
        reason = _floor_rule_broken(imp.importer, imp.imported)
        if reason:
            found.append(f"{imp.importer} -> {imp.imported} ({reason}) [line {imp.line}]")
    return found


def import_cycles(imports: list[Import], with_function_level: bool = False) -> list[list[str]]:
    """Cycles of module-top imports (with ``with_function_level``, of imports inside functions
    too), one per strongly connected component (Tarjan), each as a path that starts and ends
    at the same module."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if (with_function_level or not imp.in_function) and not imp.type_checking:
            graph.setdefault(imp.importer, set()).add(imp.imported)
            graph.setdefault(imp.imported, set())

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    return [_one_cycle(graph, component) for component in components]


def _one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first search)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parents:
                    parents[w] = v
                    following.append(w)
        frontier = following
    return sorted(component)


def function_level_share(imports: list[Import]) -> tuple[float, Counter]:
    """Share of imports that sit inside functions, and their count per importing module."""
    inside = Counter(imp.importer for imp in imports if imp.in_function)
    return (sum(inside.values()) / len(imports) if imports else 0.0), inside


# --- the package ---------------------------------------------------------------------------


def test_imports_respect_the_floors():
    violations = floor_violations(collect_imports())
    assert not violations, f"{len(violations)} imports cross a floor:\n" + "\n".join(violations)


def test_no_import_cycles_between_modules():
    cycles = import_cycles(collect_imports())
    assert not cycles, "module-top import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_unlisted_cycle_through_a_function_level_import():
    cycles = [
        cycle
        for cycle in import_cycles(collect_imports(), with_function_level=True)
        if frozenset(cycle) not in ALLOWED_FUNCTION_LEVEL_CYCLES
    ]
    assert not cycles, "import cycles closed inside functions:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_most_medmm_imports_sit_at_module_top():
    imports = collect_imports()
    share, inside = function_level_share(imports)
    worst = "\n".join(f"  {count:3d}  {module}" for module, count in inside.most_common(15))
    message = (
        f"{sum(inside.values())} of {len(imports)} medmm imports ({share:.0%}) sit inside functions "
        f"(at most {MAX_FUNCTION_LEVEL_SHARE:.0%}); most in:\n{worst}"
    )
    print(message)
    assert share <= MAX_FUNCTION_LEVEL_SHARE, message


def test_every_floor_is_in_the_table():
    packages = {p.name for p in PACKAGE_ROOT.iterdir() if (p / "__init__.py").exists()}
    # Top-level modules (medmm/cli.py) have floors too; medmm/__init__.py and __main__ do not.
    packages |= {p.stem for p in PACKAGE_ROOT.glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert packages == set(FLOORS), f"packages {packages ^ set(FLOORS)} differ from the floors table"


# --- the checkers on a made-up package -----------------------------------------------------


def _imp(importer: str, imported: str, in_function: bool = False) -> Import:
    return Import(importer, imported, 1, in_function)


def test_checker_reports_an_upward_import():
    found = floor_violations([_imp("medmm.io.dicom", "medmm.workflows.report.run")])
    assert found == [
        "medmm.io.dicom -> medmm.workflows.report.run (floor io may not import floor workflows) [line 1]"
    ]


def test_checker_reports_tracking_importing_a_workflow_and_a_pipeline():
    found = floor_violations(
        [
            _imp("medmm.tracking.pipeline_run", "medmm.workflows.contrastive.served", in_function=True),
            _imp("medmm.tracking.pipeline_run", "medmm.pipelines.pretrain"),
        ]
    )
    assert len(found) == 2
    assert "floor tracking may not import floor workflows" in found[0]
    assert "floor tracking may not import floor pipelines" in found[1]


def test_checker_allows_same_floor_siblings_and_lower_floors():
    allowed = [
        _imp("medmm.losses.symile", "medmm.models.registry"),
        _imp("medmm.training.grad_cache", "medmm.tracking.run_context"),
        _imp("medmm.workflows.report.run", "medmm.config.core"),
        _imp("medmm.pipelines.make_demo", "medmm.demo.generator"),
        _imp("medmm.pipelines.make_demo_volumes", "medmm.demo.volumes"),
        _imp("medmm.demo.generator", "medmm.cohort.spec"),
        _imp("medmm.workflows.finetune.module", "medmm.workflows.contrastive.config"),
        _imp("medmm.workflows.report.run", "medmm.workflows.pretrained"),
        _imp("medmm.workflows.report.run", "medmm.workflows.report.module"),
    ]
    assert floor_violations(allowed) == []


def test_checker_reports_demo_imports_and_cross_workflow_imports():
    found = floor_violations(
        [
            _imp("medmm.workflows.contrastive.evaluation", "medmm.demo.generator"),
            _imp("medmm.pipelines.pretrain", "medmm.demo.generator"),
            _imp("medmm.demo.generator", "medmm.pipelines.make_demo"),
            _imp("medmm.workflows.report.run", "medmm.workflows.contrastive.evaluation"),
        ]
    )
    assert len(found) == 4
    assert "floor workflows may not import floor demo" in found[0]
    assert "floor pipelines may not import floor demo" in found[1]
    assert "floor demo may not import floor pipelines" in found[2]
    assert "workflow report may not import workflow contrastive" in found[3]


def test_checker_finds_a_cycle_but_not_through_a_function_level_import():
    cycle = [_imp("medmm.a", "medmm.b"), _imp("medmm.b", "medmm.c"), _imp("medmm.c", "medmm.a")]
    assert import_cycles(cycle) == [["medmm.a", "medmm.b", "medmm.c", "medmm.a"]]
    broken = [*cycle[:2], _imp("medmm.c", "medmm.a", in_function=True)]
    assert import_cycles(broken) == []
    assert import_cycles(broken, with_function_level=True) == [["medmm.a", "medmm.b", "medmm.c", "medmm.a"]]
    assert import_cycles([_imp("medmm.a", "medmm.a")]) == [["medmm.a", "medmm.a"]]


def test_collect_imports_reads_top_function_relative_and_type_checking_imports(tmp_path):
    root = tmp_path / "medmm"
    for folder in ("io", "workflows"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "io" / "dicom.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import numpy\n"
        "from . import table\n"
        "if TYPE_CHECKING:\n"
        "    from medmm.workflows.run import Outcome\n"
        "def read():\n"
        "    from medmm.workflows import run\n"
    )
    (root / "io" / "table.py").write_text("from medmm.io.dicom import read\n")
    (root / "workflows" / "run.py").write_text("import medmm.io\n")
    got = sorted(collect_imports(root), key=lambda i: (i.importer, i.line))
    assert got == [
        Import("medmm.io.dicom", "medmm.io.table", 3),
        Import("medmm.io.dicom", "medmm.workflows.run", 5, type_checking=True),
        Import("medmm.io.dicom", "medmm.workflows.run", 7, in_function=True),
        Import("medmm.io.table", "medmm.io.dicom", 1),
        Import("medmm.workflows.run", "medmm.io", 1),
    ]
    assert len(floor_violations(got)) == 2
    assert import_cycles(got) == [["medmm.io.dicom", "medmm.io.table", "medmm.io.dicom"]]
    share, inside = function_level_share(got)
    assert share == 1 / 5 and inside == Counter({"medmm.io.dicom": 1})
