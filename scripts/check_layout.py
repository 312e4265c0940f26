#!/usr/bin/env python3
"""Checks the package layout from the source: the data flow is visible and holds.

    python scripts/check_layout.py            # a report; exit 1 when a rule is broken

Rules (ARCHITECTURE.md draws them):
- `pipeline/` has at least three subpackages along the data flow;
- imports between fmpipe's modules form no cycle (module-level and function-level imports alike);
- each part imports only the parts below it in LAYERS (the faces, cli, the package root and
  the verbs it re-exports from `_api`, may import anything);
- inside `storage/`, every module lives in a room (ROOMS; `storage/__init__.py` is the only loose
  one) and each room imports only the rooms ROOMS lets it: format <- shared only; locks <- format;
  integrity <- format; reading <- format, integrity; writing <- format, locks, integrity, reading;
- LAYERS and ROOMS are one-way: neither table has a cycle;
- every module has its line in ARCHITECTURE.md's module table, and every line names a module;
- torch, torchvision and timm are imported only inside `pipeline/extraction/`
  (ruff's banned-api rule, TID251 in pyproject.toml, enforces the same on every lint);
- no module over MAX_MODULE_LINES lines, no function over MAX_FUNCTION_LINES lines besides its
  docstring (a public verb's numpy-style Parameters section documents every option; it is not code).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "pipeline"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
HEAVY = ("torch", "torchvision", "timm")
TORCH_PART = "extraction"
# part -> the parts it may import (besides itself). "shared" is the top-level modules.
LAYERS = {
    "shared": set(),
    "storage": {"shared"},
    "extraction": {"shared", "storage", "jobs"},
    "jobs": {"shared", "storage"},
    "rendering": {"shared", "storage"},
    "site": {"shared", "storage", "rendering"},
    "viewer": {"shared", "storage", "rendering", "site"},
    "analysis": {"shared", "storage", "rendering"},
}
FACES = {"pipeline", "pipeline.__main__", "pipeline.cli", "pipeline._api"}
ROOMED = "storage"  # the part whose modules live in rooms
# room -> the rooms it may import (besides itself and the shared modules); one-way.
ROOMS = {
    "format": set(),  # what a file is and means, and what a valid file is
    "locks": {"format"},  # OUT.lock and its holders
    "integrity": {"format"},  # checksummed chunk reads, the seal, statistics and source checks
    "reading": {"format", "integrity"},  # the Store (a merged file's seal checked on open), top lists
    "writing": {"format", "locks", "integrity", "reading"},  # plan, layout, rows, batches, the writer
}


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module in the package."""
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def part_of(module: str) -> str:
    """`pipeline.storage.reading.store` -> "storage"; top-level modules -> "shared"; faces -> "faces"."""
    if module in FACES or module.startswith(("pipeline.cli.", "pipeline._api.")):
        return "faces"
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 2 or (len(pieces) == 2 and pieces[1] in LAYERS) else "shared"


def room_of(module: str) -> str | None:
    """`pipeline.storage.reading.store` -> "reading"; `pipeline.storage.foo` -> "foo" (a loose
    module, no room); None outside storage and for `pipeline.storage` itself."""
    pieces = module.split(".")
    return pieces[2] if len(pieces) > 2 and pieces[:2] == [PACKAGE, ROOMED] else None


def room_problems(known: dict[str, Path], edges: dict[str, set[str]]) -> list[str]:
    """Storage modules outside a room, and imports between rooms that ROOMS does not allow."""
    problems = []
    for module, path in sorted(known.items()):
        room = room_of(module)
        if room is not None and room not in ROOMS:
            problems.append(f"{path.relative_to(ROOT)}: not in one of storage's rooms ({', '.join(ROOMS)})")
        for target in sorted(edges[module]):
            theirs = room_of(target)
            if room in ROOMS and theirs in ROOMS and theirs != room and theirs not in ROOMS[room]:
                problems.append(f"{module} ({room}) imports {target} ({theirs}): against storage's rooms")
    return problems


def undocumented(known: dict[str, Path]) -> list[str]:
    """Modules without their line in ARCHITECTURE.md's module table (`| `pipeline/...py` | does |`)."""
    table = set(re.findall(r"^\| `(pipeline/[^`]+\.py)` \|", (ROOT / "ARCHITECTURE.md").read_text(), re.MULTILINE))
    found = {str(path.relative_to(ROOT)) for path in known.values() if path.name not in ("__init__.py", "__main__.py")}
    problems = [f"{name}: no line in ARCHITECTURE.md's module table" for name in sorted(found - table)]
    problems += [
        f"ARCHITECTURE.md names {name}, which does not exist"
        for name in sorted(table - found - {"pipeline/__init__.py"})
    ]
    return problems


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            # `from . import schema` depends on the module schema, not on the package's __init__
            # (which Python runs first for every submodule anyway).
            out += [(m, node.lineno) for m in submodules] or [(target, node.lineno)]
    return out


def internal_edges(known: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        for target, _ in imports(module, path, known):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module and target != PACKAGE:
                edges[module].add(target)
            elif target == PACKAGE and module != PACKAGE:
                edges[module].add(PACKAGE)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def long_functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    lengths = [(node.name, _code_lines(node)) for node in functions]
    return [(name, length) for name, length in lengths if length > MAX_FUNCTION_LINES]


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """The function's lines, signature and body, less its docstring's."""
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def check() -> list[str]:
    known = modules()
    problems = []
    subpackages = sorted({part_of(m) for m in known} - {"shared", "faces"})
    if len(subpackages) < 3:
        problems.append(f"only {len(subpackages)} subpackages ({', '.join(subpackages)}); want at least 3")
    edges = internal_edges(known)
    problems += [f"import cycle: {' <-> '.join(c)}" for c in cycles(edges)]
    problems += [f"LAYERS has a cycle: {' <-> '.join(c)}" for c in cycles(LAYERS)]
    problems += [f"ROOMS has a cycle: {' <-> '.join(c)}" for c in cycles(ROOMS)]
    problems += room_problems(known, edges)
    problems += undocumented(known)
    for module, targets in sorted(edges.items()):
        mine = part_of(module)
        for target in sorted(targets):
            theirs = part_of(target)
            if mine != "faces" and theirs != mine and theirs not in LAYERS.get(mine, set()):
                problems.append(f"{module} ({mine}) imports {target} ({theirs}): against the data flow")
    for module, path in known.items():
        heavy = [(t, line) for t, line in imports(module, path, known) if t.split(".")[0] in HEAVY]
        if heavy and part_of(module) != TORCH_PART:
            problems += [f"{path.relative_to(ROOT)}:{line} imports {t} outside {TORCH_PART}/" for t, line in heavy]
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            problems.append(f"{path.relative_to(ROOT)}: {lines} lines (max {MAX_MODULE_LINES})")
        for name, length in long_functions(path):
            problems.append(
                f"{path.relative_to(ROOT)}: function {name} is {length} lines besides its docstring "
                f"(max {MAX_FUNCTION_LINES})"
            )
    return problems


def report() -> str:
    known = modules()
    parts: dict[str, list[str]] = {}
    for module in known:
        parts.setdefault(part_of(module), []).append(module)
    rooms: dict[str, int] = {}
    for module in known:
        if room_of(module) is not None:
            rooms[room_of(module)] = rooms.get(room_of(module), 0) + 1
    longest = max(len(p.read_text().splitlines()) for p in known.values())
    return (
        f"{len(known)} modules; parts: "
        + ", ".join(f"{name} {len(mods)}" for name, mods in sorted(parts.items()))
        + f"; {ROOMED} rooms: "
        + ", ".join(f"{name} {count}" for name, count in sorted(rooms.items()))
        + f"; longest module {longest} lines"
    )


def main() -> int:
    problems = check()
    print(report())
    for problem in problems:
        print(f"  {problem}")
    print("layout OK" if not problems else f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
