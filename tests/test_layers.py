"""The package's layers: which parts of ``dagman_components`` may import which, and no import cycle.

Every module under ``dagman_components/`` is parsed (``ast``, nothing is imported) and every import statement
counts: module-level ones and the lazy ones inside functions alike, since a lazy import is still a dependency.
The parts are the top-level modules and subpackages (``networks``, ``data``, ``bundle_utils``, ...); each sits
in one layer, and a part may import only parts of its own layer or of a layer below. The layers (also in
``docs/design.md``, "Layers"):

1. foundation: ``errors``, ``options`` (config flags and whole numbers), ``metrics``, ``masking``, ``losses``,
   ``networks``: the method itself, with no knowledge of files, bundles or training loops;
2. pipeline: ``data`` (datalists, checks, transforms) and ``engines`` (trainer, handlers);
3. glue: ``bundle_utils`` (what the bundle configs call), ``analysis``, ``experiments``, ``benchmark``, ``release``.

On top of the layer rule, neither the graph of parts nor the graph of modules may have a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "dagman_components"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

LAYERS: dict[str, int] = {
    **dict.fromkeys(("errors", "options", "metrics", "masking", "losses", "networks"), 1),
    **dict.fromkeys(("data", "engines"), 2),
    **dict.fromkeys(("bundle_utils", "analysis", "experiments", "benchmark", "release"), 3),
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_files(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package modules that module ``name`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # ``import pkg.sub.attr`` -> the deepest module named
                target = target.rpartition(".")[0]
            if target.startswith(PACKAGE + ".") and target != name:
                found.add(target)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = module_files(root)
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def part_of(module: str) -> str:
    return module.split(".")[1]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def part_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    parts: dict[str, set[str]] = {}
    for module, targets in graph.items():
        if module == PACKAGE:
            continue
        parts.setdefault(part_of(module), set()).update(part_of(t) for t in targets if part_of(t) != part_of(module))
    return parts


def test_every_part_of_the_package_has_a_layer():
    parts = {part_of(m) for m in module_files() if m != PACKAGE}
    assert parts == set(LAYERS), f"give {sorted(parts - set(LAYERS))} a layer here and in docs/design.md"


def test_imports_go_down_the_layers_only():
    violations = [
        f"{module} (layer {LAYERS[part_of(module)]}) imports {target} (layer {LAYERS[part_of(target)]})"
        for module, targets in import_graph().items() if module != PACKAGE
        for target in sorted(targets)
        if LAYERS[part_of(target)] > LAYERS[part_of(module)]
    ]
    assert not violations, "\n".join(violations)


def test_no_import_cycle_between_parts_or_modules():
    graph = import_graph()
    assert find_cycle(part_graph(graph)) is None, f"import cycle between parts: {find_cycle(part_graph(graph))}"
    assert find_cycle(graph) is None, f"import cycle between modules: {find_cycle(graph)}"


def test_the_checker_sees_relative_lazy_and_package_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    for rel, text in {
        "__init__.py": "",
        "errors.py": "def f():\n    from dagman_components.data import checks  # a lazy upward import\n",
        "data/__init__.py": "from .checks import x\n",
        "data/checks.py": "from ..errors import f\nimport dagman_components.data.checks\nx = 1\n",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    graph = import_graph(pkg)
    assert graph == {
        PACKAGE: set(),
        f"{PACKAGE}.errors": {f"{PACKAGE}.data.checks"},
        f"{PACKAGE}.data": {f"{PACKAGE}.data.checks"},
        f"{PACKAGE}.data.checks": {f"{PACKAGE}.errors"},
    }
    assert find_cycle(graph) == [f"{PACKAGE}.data.checks", f"{PACKAGE}.errors", f"{PACKAGE}.data.checks"]
    assert find_cycle(part_graph(graph)) == ["data", "errors", "data"]

