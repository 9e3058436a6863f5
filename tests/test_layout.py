"""The package's shape, checked from its source with ``ast``: no import cycles, no private
names across modules, other packages' private APIs only in ``pytest_llmcheck/compat/``, and
imports between the folders pointing down their order (``RANKS``).

Why: a cycle means two modules cannot be read, tested or moved apart, and one that exists
only for type checking is still one (mypy and readers follow it), so every import counts:
module level, inside functions and under ``if TYPE_CHECKING:``; deferring an import hides a
cycle but keeps it. An underscore name is its module's own business: another module that
needs it should get a public name. Another package's private name can change in any
release, so it is used in one adapter per package, which ``tests/test_compat.py`` checks
against the pinned range. Nothing is imported here; the whole check takes well under a second.
"""

from __future__ import annotations

import ast
import functools
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "pytest_llmcheck"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
COMPAT = f"{PACKAGE}.compat"
TRANSFORMERS = f"{PACKAGE}.engines.transformers"

# What is left in files other work holds right now: each entry says how it goes away. A fixed
# one fails the test until its entry is removed, so these lists only shrink.
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str]] = set()
KNOWN_OTHER_PRIVATES: set[tuple[str, str]] = set()
# Underscore names that are public API: os._exit, namedtuple's methods.
PUBLIC_UNDERSCORE = {"_exit", "_asdict", "_replace", "_fields", "_make"}


@dataclass(frozen=True)
class Edge:
    """One import of a package module by another: where it is, and the names it takes."""

    source: str
    target: str
    line: int
    names: tuple[str, ...]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


@functools.cache
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@functools.cache
def nodes(path: Path) -> tuple[ast.AST, ...]:
    """Every node of a module, walked once (the checks below each go over them)."""
    return tuple(ast.walk(parse(path)))


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if node.level > 1:
        package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, node.module] if node.module else package)


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The longest package module that ``name`` is or lies in (``a.b.X`` -> ``a.b``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def edges(modules: dict[str, Path]) -> Iterator[Edge]:
    for module, path in modules.items():
        for node in nodes(path):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = _owner(alias.name, modules)
                    if target is not None and target != module:
                        yield Edge(module, target, node.lineno, ())
            elif isinstance(node, ast.ImportFrom):
                base = _base(module, path, node)
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    if submodule in modules:  # `from package import submodule`
                        if submodule != module:
                            yield Edge(module, submodule, node.lineno, ())
                        continue
                    target = _owner(base, modules)
                    if target is not None and target != module:
                        yield Edge(module, target, node.lineno, (alias.name,))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle in ``graph`` as a closed path of modules, or None (depth-first, no recursion)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def all_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles one at a time, each cut at the edge that closed it, until none is left."""
    graph = {node: set(targets) for node, targets in graph.items()}
    cycles = []
    while (cycle := find_cycle(graph)) is not None:
        cycles.append(cycle)
        graph[cycle[-2]].discard(cycle[-1])
    return cycles


def defined_names(modules: dict[str, Path]) -> set[str]:
    """Every name the package itself defines or assigns (functions, classes, variables,
    attributes it sets, parameters): an underscore attribute outside this set is another
    package's."""
    names: set[str] = set()
    for path in modules.values():
        for node in nodes(path):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store | ast.Del):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias) and node.asname:
                names.add(node.asname)
    return names


def other_privates(tree: Sequence[ast.AST], ours: set[str]) -> Iterator[tuple[str, int, str]]:
    """(private name, line, how) for each use of another package's private API in one module:
    imports of private modules or names, ``importlib.import_module`` of one, ``getattr`` and
    friends with a private literal, private attributes the package never defines, and private
    members of a class that derives from another package's class."""
    external: set[str] = set()  # names bound to other packages' modules or classes
    for node in tree:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not alias.name.startswith(PACKAGE):
                    external.add(alias.asname or alias.name.split(".")[0])
                    for part in alias.name.split("."):
                        if is_private(part):
                            yield part, node.lineno, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            if (node.module or "").startswith(PACKAGE):
                continue
            for part in (node.module or "").split("."):
                if is_private(part):
                    yield part, node.lineno, f"from {node.module} import"
            for alias in node.names:
                external.add(alias.asname or alias.name)
                if is_private(alias.name):
                    yield alias.name, node.lineno, f"from {node.module} import {alias.name}"
    for node in tree:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute):
            func = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            at = {"getattr": 1, "hasattr": 1, "setattr": 1, "delattr": 1, "import_module": 0}.get(func)
            literal = node.args[at] if at is not None and len(node.args) > at else None
            if isinstance(literal, ast.Constant) and isinstance(literal.value, str):
                for part in literal.value.split("."):
                    if is_private(part) and (func == "import_module" or part not in ours):
                        yield part, node.lineno, f"{func}(..., {literal.value!r})"
        elif isinstance(node, ast.Attribute) and is_private(node.attr):
            if node.attr not in ours and node.attr not in PUBLIC_UNDERSCORE:
                yield node.attr, node.lineno, f"attribute .{node.attr}"
        elif isinstance(node, ast.ClassDef):
            bases = {b.id if isinstance(b, ast.Name) else b.attr for b in node.bases
                     if isinstance(b, ast.Name | ast.Attribute)}
            if bases & external:
                for member in node.body:
                    targets = [member.name] if isinstance(member, ast.FunctionDef) else [
                        t.id for t in (member.targets if isinstance(member, ast.Assign) else
                                       [member.target] if isinstance(member, ast.AnnAssign) else [])
                        if isinstance(t, ast.Name)]
                    for name in targets:
                        if is_private(name):
                            yield name, member.lineno, f"{node.name} overrides {name} of {', '.join(bases)}"


def test_the_checker_sees_what_it_should(tmp_path: Path) -> None:
    """The checker itself: relative imports resolved, every kind of import counted, cycles and
    other packages' private names found."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert len(all_cycles({"a": {"b", "c"}, "b": {"a"}, "c": {"a"}})) == 2
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "sub/__init__.py": "from . import leaf\n",
        "sub/leaf.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..top import Thing\n",
        "top.py": "def f():\n    from .sub.leaf import _secret\n",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    modules = {module_name(package / name, tmp_path / "pkg"): package / name for name in files}
    assert {(e.source, e.target, e.names) for e in edges(modules)} == {
        ("pkg.sub", "pkg.sub.leaf", ()),
        ("pkg.sub.leaf", "pkg.top", ("Thing",)),
        ("pkg.top", "pkg.sub.leaf", ("_secret",)),
    }
    source = (
        "import importlib\nfrom lib import Base\nfrom lib._inner import x\nimport lib\n"
        "class Mine(Base):\n    _mode = 1\n    def _hook(self): return self._own\n"
        "def f(obj):\n    obj._own = 1\n    importlib.import_module('lib._mod')\n"
        "    return getattr(obj, '_hidden'), lib._thing, obj._own\n"
    )
    tree = tuple(ast.walk(ast.parse(source)))
    found = {name for name, _, _ in other_privates(tree, {"_own", "_mode", "_hook"})}
    assert found == {"_inner", "_mode", "_hook", "_mod", "_hidden", "_thing"}


def test_no_import_cycles() -> None:
    modules = all_modules()
    graph: dict[str, set[str]] = {module: set() for module in modules}
    where: dict[tuple[str, str], int] = {}
    for edge in edges(modules):
        graph[edge.source].add(edge.target)
        where.setdefault((edge.source, edge.target), edge.line)
    stale = sorted(edge for edge in KNOWN_CYCLE_EDGES if edge[1] not in graph.get(edge[0], set()))
    assert not stale, f"fixed, so remove from KNOWN_CYCLE_EDGES: {stale}"
    for source, target in KNOWN_CYCLE_EDGES:
        graph[source].discard(target)
    cycles = all_cycles(graph)
    shown = [" -> ".join(f"{a} (line {where[a, b]})" for a, b in itertools.pairwise(cycle))
             + f" -> {cycle[-1]}" for cycle in cycles]
    assert not cycles, "import cycles (TYPE_CHECKING and in-function imports count):\n" + "\n".join(shown)


def test_no_private_names_across_modules() -> None:
    found = {(edge.source, name): edge.line for edge in edges(all_modules())
             for name in edge.names if is_private(name)}
    new = [f"{source} (line {line}) imports {name}" for (source, name), line in sorted(found.items())
           if (source, name) not in KNOWN_PRIVATE_IMPORTS]
    assert not new, "private names imported across modules (give them a public name):\n" + "\n".join(new)
    stale = sorted(KNOWN_PRIVATE_IMPORTS - set(found))
    assert not stale, f"fixed, so remove from KNOWN_PRIVATE_IMPORTS: {stale}"


def test_other_packages_private_names_only_in_compat() -> None:
    modules = all_modules()
    ours = defined_names(modules)
    found: dict[tuple[str, str], str] = {}
    for module, path in modules.items():
        if module == COMPAT or module.startswith(COMPAT + "."):
            continue
        for name, line, how in other_privates(nodes(path), ours):
            found.setdefault((module, name), f"{module} (line {line}): {how}")
    new = [text for key, text in sorted(found.items()) if key not in KNOWN_OTHER_PRIVATES]
    assert not new, (
        "other packages' private names outside pytest_llmcheck/compat/ (add them to that package's "
        "adapter there, with its check in tests/test_compat.py):\n" + "\n".join(new)
    )
    stale = sorted(KNOWN_OTHER_PRIVATES - set(found))
    assert not stale, f"fixed, so remove from KNOWN_OTHER_PRIVATES: {stale}"


# The folders from the bottom up: an import between folders goes to the same rank or lower, so the
# parts can be read (and tested) from the bottom: what people are shown, configuration, storage,
# engines, checks, snapshots, reporting, running, distribution, the CLI, the pytest face.
RANKS = {
    "text": 0, "compat": 0, "errors": 1, "config": 2, "storage": 3, "engines": 4, "checks": 5,
    "snapshots": 6, "reporting": 7, "run": 8, "distribution": 8, "cli": 9, "hooks": 10, "plugin": 10, "": 10,
}
# Imports that still point up: each says how it goes away. A fixed one fails the test until its
# entry is removed, so this list only shrinks.
KNOWN_UPWARD = {
    # the alias registry builds the engine registry to read "name@engine": take it as an argument
    (f"{PACKAGE}.config.registry", f"{PACKAGE}.engines.registry"),
    # smollm2_path looks up the pulled GGUF in the cache: move that lookup into storage/embedded.py
    (f"{PACKAGE}.config.registry", f"{PACKAGE}.storage.cache"),
    # Settings holds parsed values of three other parts: move Tolerance, Shard and default_cache_dir
    # (values and parsers only) into config/, leaving comparing, sharding and the cache where they are
    (f"{PACKAGE}.config.settings", f"{PACKAGE}.checks.tolerance"),
    (f"{PACKAGE}.config.settings", f"{PACKAGE}.distribution.shard"),
    (f"{PACKAGE}.config.settings", f"{PACKAGE}.storage.cache"),
    # the replay engine answers from recorded reports: read them through a loader the CLI passes in
    (f"{PACKAGE}.engines.replay", f"{PACKAGE}.reporting.recordings"),
    # review checks a report.json against its schema: the schema's loader belongs low (storage)
    (f"{PACKAGE}.snapshots.pending", f"{PACKAGE}.reporting.report"),
}


def folder(module: str) -> str:
    """``pytest_llmcheck.run.case`` -> ``run``; the package itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_folder_has_a_rank() -> None:
    unranked = sorted({folder(m) for m in all_modules()} - set(RANKS))
    assert not unranked, f"give these folders a place in RANKS (tests/test_layout.py): {unranked}"


def test_imports_point_down_the_folders() -> None:
    found: dict[tuple[str, str], int] = {}
    for edge in edges(all_modules()):
        if RANKS.get(folder(edge.target), 0) > RANKS.get(folder(edge.source), 0):
            found.setdefault((edge.source, edge.target), edge.line)
    new = [f"{source} (line {line}) imports {target}" for (source, target), line in sorted(found.items())
           if (source, target) not in KNOWN_UPWARD]
    assert not new, "imports that point up the folders (see RANKS):\n" + "\n".join(new)
    stale = sorted(KNOWN_UPWARD - set(found))
    assert not stale, f"fixed, so remove from KNOWN_UPWARD: {stale}"
