"""The package layering (hatllm/__init__.py), checked on the static import graph of the project: every
import statement counts, including those inside functions, whether or not it runs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hatllm", "model_patch", "service")
OFFLINE = ("hatllm.training", "hatllm.evaluation", "hatllm.reference")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imports_of(name: str, path: Path) -> set[str]:
    """Every module `name` imports (absolute names; `from m import x` counts m and m.x)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """Project module -> the project modules and third-party top-level packages it imports."""
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for imported in imports_of(name, path):
            top = imported.split(".")[0]
            if imported in modules:
                deps.add(imported)
            elif top not in PACKAGES:  # a project name that is no module is an attribute of one already counted
                deps.add(top)
        graph[name] = deps - {name}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_sees_imports_inside_functions(graph):
    assert "transformers" in graph["hatllm.core.prompt"]  # imported inside PromptBuilder.from_checkpoint


def test_serving_reaches_no_training_evaluation_or_reference_module(graph):
    for start in [m for m in graph if in_package(m, "service") or in_package(m, "model_patch")]:
        offline = {m for m in reachable(graph, start) if any(in_package(m, p) for p in OFFLINE)}
        assert not offline, f"{start} reaches {sorted(offline)}"


def test_top_level_packages_depend_one_way(graph):
    edges = {(a.split(".")[0], b.split(".")[0]) for a, deps in graph.items() for b in deps
             if b.split(".")[0] in PACKAGES and b.split(".")[0] != a.split(".")[0]}
    assert edges <= {("model_patch", "hatllm"), ("service", "hatllm"), ("service", "model_patch")}, edges


def test_core_imports_no_model_code_and_no_vllm(graph):
    for name in [m for m in graph if in_package(m, "hatllm.core")]:
        project = {d for d in graph[name] if d in graph}
        assert all(in_package(d, "hatllm.core") for d in project), f"{name} imports {sorted(project)}"
        assert "vllm" not in graph[name]
        if name != "hatllm.core.masks":  # the mask rules are tensor code; nothing else in the core needs torch
            assert "torch" not in graph[name], name


def test_only_model_patch_and_the_service_engine_import_vllm(graph):
    users = {m for m, deps in graph.items() if "vllm" in deps}
    assert users and all(in_package(m, "model_patch") or m == "service.engine" for m in users), sorted(users)


def test_no_import_cycles(graph):
    project = {m: {d for d in deps if d in graph} for m, deps in graph.items()}
    for name in project:
        assert name not in reachable(project, name), f"{name} imports itself through a cycle"
