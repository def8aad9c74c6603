"""Every name a benchmark script imports from medmm exists, its lazy imports inside functions
included: the scripts run rarely, and a renamed function should fail here, not after an hour
of training."""

from __future__ import annotations

import ast
import importlib
import importlib.util

import pytest

from tests.conftest import REPO

SCRIPTS = sorted((REPO / "benchmarks").glob("*.py"))


def medmm_imports(path) -> list[tuple[str, str]]:
    return [(node.module, alias.name) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "medmm"
            for alias in node.names]


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_every_medmm_name_a_benchmark_imports_exists(script):
    missing = [f"{module}.{name}" for module, name in medmm_imports(script)
               if not hasattr(importlib.import_module(module), name)
               and importlib.util.find_spec(f"{module}.{name}") is None]
    assert not missing, f"{script.name} imports names medmm does not have: {missing}"
