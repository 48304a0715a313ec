"""The dependency rules between packages, read from the source with ast (nothing is imported).

engine and simulator stand alone; inside lab, capture <- analysis <- run, and the venue
uses neither analysis nor run.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the packages it must never import
RULES = {
    "engine": ("lab", "simulator"),
    "simulator": ("lab", "engine"),
    "lab.capture": ("lab.analysis", "lab.run", "lab.venue"),
    "lab.analysis": ("lab.run", "lab.venue"),
    "lab.venue": ("lab.analysis", "lab.run"),
}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(root: Path, name: str) -> bool:
    path = root.joinpath(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, functions included, relative ones resolved.
    `from a import b` gives a, and a.b too when b is a module of the tree."""
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module
            if node.level:                       # relative: from the file's package upwards
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names
                      if is_module(root, f"{base}.{alias.name}")]
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(package: str, forbidden: tuple[str, ...], root: Path = ROOT) -> list[str]:
    folder = root.joinpath(*package.split("."))
    found = set()
    for path in sorted(folder.rglob("*.py")):
        for line, module in imports(path, root):
            for banned in forbidden:
                if within(module, banned):
                    found.add(f"{path.relative_to(root)}:{line} imports {module} ({package} must not import {banned})")
    return sorted(found)


@pytest.mark.parametrize("package", RULES)
def test_package_imports_only_what_its_layer_allows(package):
    assert violations(package, RULES[package]) == []


def test_the_checker_sees_relative_and_submodule_imports(tmp_path):
    venue, run = tmp_path / "lab" / "venue", tmp_path / "lab" / "run"
    venue.mkdir(parents=True)
    run.mkdir()
    (venue / "one.py").write_text("from ..analysis.stats import summarize\n")
    (venue / "two.py").write_text("def f():\n    from lab import run\n")
    (venue / "fine.py").write_text("from lab.capture import open_capture\nfrom . import market\n")
    assert [v.split(" (")[0] for v in violations("lab.venue", RULES["lab.venue"], tmp_path)] == [
        "lab/venue/one.py:1 imports lab.analysis.stats",
        "lab/venue/two.py:2 imports lab.run",
    ]


def module_level_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the project modules it imports at import time (not inside functions)."""
    graph = {}
    for folder in ("engine", "simulator", "lab"):
        for path in sorted((root / folder).rglob("*.py")):
            name = module_name(path, root)
            tree = ast.parse(path.read_text(), str(path))
            top = ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))],
                             type_ignores=[])
            imported = set()
            for line, module in _imports_of(top, path, root):
                parts = module.split(".")
                for k in range(len(parts), 0, -1):          # the longest prefix that is a module here
                    candidate = ".".join(parts[:k])
                    if candidate.split(".")[0] in ("engine", "simulator", "lab") and is_module(root, candidate):
                        imported.add(candidate)
                        break
            graph[name] = imported - {name}
    return graph


def _imports_of(tree, path, root):
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            yield node.lineno, base


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles, each as the modules on it (depth-first search, white-grey-black)."""
    state, stack, found = {}, [], []

    def visit(module):
        state[module] = "grey"
        stack.append(module)
        for other in sorted(graph.get(module, ())):
            if other.startswith(module + "."):              # a package importing its own submodule
                continue
            if state.get(other) == "grey":
                found.append(stack[stack.index(other):] + [other])
            elif other not in state:
                visit(other)
        stack.pop()
        state[module] = "black"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def test_no_module_level_import_cycle():
    assert cycles(module_level_graph()) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
