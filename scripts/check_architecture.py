#!/usr/bin/env python3
"""Architecture checks that the import-linter contracts (pyproject.toml) do not make:

- **no import cycles** anywhere in the first-party packages (a layers contract only forbids upward
  imports between layers; a cycle inside one layer or one package would pass it);
- **no private names across modules**: a module never imports, or reaches through an attribute, a
  name with a leading underscore that belongs to another module (``from x import _y``, ``x._y``,
  ``import pkg._mod``). A package's own submodules may share its private names;
- **absolute imports only** (``from tfovss_core.x import y``, never ``from .x import y``).

    python scripts/check_architecture.py            # the repository's packages, exit 1 on offences
    python scripts/check_architecture.py --root DIR pkg_a pkg_b

Each offence is printed once as ``path:line: what``. Run by scripts/test.sh before pytest and by
tests/test_architecture.py.
"""
from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("tfovss_core", "tfovss_fiftyone", "plugin", "bench")


@dataclass(frozen=True, order=True)
class Offence:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` file of the given packages under root."""
    modules: dict[str, Path] = {}
    for package in packages:
        package_dir = root / package
        if not package_dir.is_dir():  # a folder of scripts without __init__.py counts too (bench/)
            raise SystemExit(f"check_architecture: no package folder {package_dir}")
        for path in sorted(package_dir.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


# ---------------------------------------------------------------------------------------- cycles

def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """``importer -> {imported: first line}`` over first-party modules, built by grimp (the library
    under import-linter), so both checks read the same graph."""
    import grimp

    sys.path.insert(0, str(root))  # find these packages here, not an installed copy elsewhere
    try:
        graph = grimp.build_graph(*packages, cache_dir=None)
    finally:
        sys.path.remove(str(root))
    edges: dict[str, dict[str, int]] = {}
    for importer in graph.modules:
        targets: dict[str, int] = {}
        for imported in graph.find_modules_directly_imported_by(importer):
            if imported == importer:
                continue
            details = graph.get_import_details(importer=importer, imported=imported)
            targets[imported] = min((d["line_number"] for d in details), default=0)
        edges[importer] = targets
    return edges


def strongly_connected(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the groups of modules that reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return sorted(groups)


def shortest_cycle(start: str, group: set[str], edges: dict[str, dict[str, int]]) -> list[str]:
    """The shortest path ``start -> ... -> start`` inside one strongly connected group."""
    previous: dict[str, str] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(edges.get(node, ())):
                if child not in group:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in seen:
                    seen.add(child)
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start} is in a strongly connected group but on no cycle")


def find_cycles(root: Path, packages: tuple[str, ...]) -> list[Offence]:
    files = module_files(root, packages)
    edges = import_graph(root, packages)
    offences = []
    for group in strongly_connected(edges):
        cycle = shortest_cycle(group[0], set(group), edges)
        first, second = cycle[0], cycle[1]
        path = files.get(first)
        steps = " -> ".join(f"{a} (l.{edges[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"
        others = f"; {len(group)} modules reach each other: {', '.join(group)}" if len(group) > len(cycle) - 1 else ""
        offences.append(Offence(_display(path, root) if path else first, edges[first][second],
                                f"import cycle: {steps}{others}"))
    return offences


# ------------------------------------------------------------------------ private names, relative

def private_owner(dotted: str) -> str | None:
    """For ``a.b._c.d`` the owner of the first private part (``a.b``); None when no part is private.
    Dunder names (``__version__``) are public."""
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
            return ".".join(parts[:i])
    return None


def _inside(module: str, owner: str) -> bool:
    return module == owner or module.startswith(owner + ".")


def _dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ["a", "b", "c"] for a chain of attributes on a plain name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _display(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def module_offences(module: str, path: Path, root: Path, modules: set[str],
                    packages: tuple[str, ...]) -> list[Offence]:
    """Private-name and relative-import offences of one module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    shown = _display(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    first_party = tuple(packages)
    offences: list[Offence] = []
    module_names: dict[str, str] = {}  # local name -> the first-party module it is bound to

    def check(dotted: str, line: int, how: str) -> None:
        if dotted.split(".")[0] not in first_party:
            return
        owner = private_owner(dotted)
        if owner is not None and not _inside(module, owner):
            offences.append(Offence(shown, line, f"{module} {how} {dotted}, a private name of {owner or dotted}"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(alias.name, node.lineno, "imports")
                if alias.asname:
                    module_names[alias.asname] = alias.name
                else:
                    head = alias.name.split(".")[0]
                    module_names[head] = head
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
                offences.append(Offence(shown, node.lineno, f"{module} uses a relative import "
                                        f"(from {'.' * node.level}{node.module or ''}); write `from {target} import ...`"))
            else:
                target = node.module or ""
            for alias in node.names:
                if alias.name == "*":
                    continue
                full = f"{target}.{alias.name}"
                check(full, node.lineno, "imports")
                if full in modules:
                    module_names[alias.asname or alias.name] = full
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private_owner(node.attr) is not None:
            parts = _dotted(node.value)
            if parts and parts[0] in module_names:
                check(".".join([module_names[parts[0]], *parts[1:], node.attr]), node.lineno, "uses")
    return offences


def find_private_imports(root: Path, packages: tuple[str, ...]) -> list[Offence]:
    files = module_files(root, packages)
    offences: list[Offence] = []
    for module, path in files.items():
        offences += module_offences(module, path, root, set(files), packages)
    return sorted(set(offences))


def check(root: Path, packages: tuple[str, ...]) -> list[Offence]:
    return find_cycles(root, packages) + find_private_imports(root, packages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO, help="directory holding the packages")
    parser.add_argument("packages", nargs="*", default=list(PACKAGES), help=f"default: {' '.join(PACKAGES)}")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    packages = tuple(args.packages)
    offences = check(root, packages)
    for offence in offences:
        print(offence)
    if offences:
        print(f"check_architecture: {len(offences)} offence(s) in {', '.join(packages)}", file=sys.stderr)
        return 1
    print(f"check_architecture: {len(module_files(root, packages))} modules of {', '.join(packages)}: "
          "no import cycles, no private names across modules, no relative imports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
