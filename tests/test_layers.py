"""The import layers of the project, read statically with ``ast``: every import of every .py file of the packages,
function-level and ``TYPE_CHECKING`` imports included (a cycle is a cycle for the reader).

- the shared core ``lfm_stream`` imports no other package of the project;
- ``ps_redis`` and ``producer`` import nothing from ``learner`` or ``recall_api``, and not each other;
- ``recall_api`` imports nothing from ``learner`` or ``producer``;
- ``lfm_local`` (the local stack, the demo and the ``lfm`` CLI) sits on top: none of the others imports it, and
  nothing imports the demo (it is run, as ``lfm demo``);
- no two modules import each other, directly or through others;
- nothing outside ``ps_redis.server`` touches a private member of the parameter server (``ps._x``): the helper
  modules, the learner and the recall service use its public interface (:mod:`ps_redis.interface`).
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lfm_stream", "producer", "ps_redis", "learner", "recall_api", "lfm_local")
FORBIDDEN = {  # package -> the project packages it must not import
    "lfm_stream": {"producer", "ps_redis", "learner", "recall_api", "lfm_local"},
    "producer": {"ps_redis", "learner", "recall_api", "lfm_local"},
    "ps_redis": {"producer", "learner", "recall_api", "lfm_local"},
    "learner": {"lfm_local"},
    "recall_api": {"learner", "producer", "lfm_local"},
    "lfm_local": set(),
}
DEMO = "lfm_local.demo"


def find_modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the packages (a package is named by its __init__)."""
    found = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported module) of every import statement in the file, anywhere in it; ``from a import b`` counts as
    importing ``a.b`` when that is a module of the project, else ``a``.  Relative imports are resolved."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((node.lineno, sub if sub in known else base))
    return out


def import_graph(root: Path, packages=PACKAGES) -> tuple[dict[str, Path], dict[str, list[tuple[int, str]]]]:
    """The modules and, per module, (line, imported module) of each import."""
    modules = find_modules(root, packages)
    return modules, {m: imports_of(m, p, set(modules)) for m, p in modules.items()}


def broken_rules(modules: dict[str, Path], graph: dict[str, list[tuple[int, str]]], root: Path) -> list[str]:
    """``file:line imports X (package P must not import Q)`` for every import that breaks a layer rule."""
    broken = []
    for module, found in graph.items():
        package = module.split(".")[0]
        where = modules[module].relative_to(root)
        for line, target in found:
            other = target.split(".")[0]
            if other in FORBIDDEN.get(package, ()):
                broken.append(f"{where}:{line} imports {target} ({package} must not import {other})")
            elif target == DEMO or target.startswith(DEMO + "."):
                broken.append(f"{where}:{line} imports {target} (nothing imports the demo)")
    return broken


def import_cycles(graph: dict[str, list[tuple[int, str]]]) -> list[list[str]]:
    """One shortest cycle (``[a, b, ..., a]``) per group of modules that import each other (strongly connected)."""
    edges = {m: sorted({t for _, t in found if t in graph and t != m}) for m, found in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(edges):
        if v not in index:
            connect(v)
    cycles = []
    for group in groups:  # a breadth-first path from the group's first module back to itself
        start = min(group)
        came_from = {start: None}
        queue = deque([start])
        while queue:
            v = queue.popleft()
            if start in edges[v]:
                path = [v]
                while came_from[path[-1]] is not None:
                    path.append(came_from[path[-1]])
                cycles.append([*reversed(path), start])
                break
            for w in edges[v]:
                if w in group and w not in came_from:
                    came_from[w] = v
                    queue.append(w)
    return cycles


def private_ps_access(modules: dict[str, Path], root: Path) -> list[str]:
    """``file:line expr`` of every ``ps._x`` / ``<...>.ps._x`` outside ``ps_redis.server``."""
    found = []
    for module, path in modules.items():
        if module == "ps_redis.server":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) \
                    else None
                if name == "ps":
                    found.append((str(path.relative_to(root)), node.lineno, ast.unparse(node)))
    return [f"{where}:{line} {expr}" for where, line, expr in sorted(found)]


# ------------------------------------------------------------------------------------------ the project
@pytest.fixture(scope="module")
def project():
    return import_graph(ROOT)


def test_every_package_is_there():
    missing = [pkg for pkg in PACKAGES if not (ROOT / pkg / "__init__.py").exists()]
    assert not missing, f"packages not found (a package moved? update PACKAGES and FORBIDDEN): {missing}"


def test_layer_rules(project):
    modules, graph = project
    broken = broken_rules(modules, graph, ROOT)
    assert not broken, "imports across the layers:\n" + "\n".join(broken)


def test_no_import_cycles(project):
    _, graph = project
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_nothing_imports_the_demo_from_tests_or_benchmarks():
    """Tests and benchmarks run the demo (``python -m lfm_local.cli demo``); importing it would make it a library."""
    scripts = {f"{p.parent.name}.{p.stem}": p for d in ("tests", "bench") for p in sorted((ROOT / d).glob("*.py"))}
    known = set(find_modules(ROOT)) | set(scripts)
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {target}" for module, path in scripts.items()
                 for line, target in imports_of(module, path, known) if target == DEMO]
    assert not offenders, "\n".join(offenders)


def test_no_private_member_of_the_parameter_server_is_used_outside_it(project):
    modules, _ = project
    found = private_ps_access(modules, ROOT)
    assert not found, "private ParameterServer members used (make them public, ps_redis.interface):\n" + \
        "\n".join(found)


# --------------------------------------------------------------------------------- the checks themselves
def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checks_find_broken_rules_cycles_and_private_access(tmp_path):
    """A small tree with one of each fault: a function-level import from the core into serving, a ``TYPE_CHECKING``
    cycle through three modules, a relative import of the demo, ``self.ps._run``; and a clean twin of each."""
    _tree(tmp_path, {
        "lfm_stream/__init__.py": "",
        "lfm_stream/schema.py": "def f():\n    from recall_api import app\n    return app\n",
        "lfm_stream/hashing.py": "import numpy\nfrom lfm_stream import schema\n",
        "recall_api/__init__.py": "",
        "recall_api/app.py": "import numpy\n",
        "producer/__init__.py": "",
        "producer/a.py": "from producer import b\n",
        "producer/b.py": "import producer.c\n",
        "producer/c.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                          "    from producer.a import X\n"),
        "producer/d.py": "from producer import a, b\n",
        "lfm_local/__init__.py": "",
        "lfm_local/demo.py": "from lfm_stream import schema\n",
        "lfm_local/cli.py": "from . import demo\n",
        "learner/__init__.py": "",
        "learner/sync.py": "class S:\n    def go(self):\n        return self.ps._run([]), self.ps.run([]), self._x\n",
    })
    modules, graph = import_graph(tmp_path)
    assert sorted(graph["lfm_local.cli"]) == [(1, "lfm_local.demo")]
    assert graph["producer.d"] == [(1, "producer.a"), (1, "producer.b")]
    broken = broken_rules(modules, graph, tmp_path)
    assert sorted(broken) == ["lfm_local/cli.py:1 imports lfm_local.demo (nothing imports the demo)",
                              "lfm_stream/schema.py:2 imports recall_api.app (lfm_stream must not import recall_api)"]
    assert import_cycles(graph) == [["producer.a", "producer.b", "producer.c", "producer.a"]]
    assert private_ps_access(modules, tmp_path) == ["learner/sync.py:3 self.ps._run"]
