"""The shape DESIGN.md promises, checked on the source: small files and functions, no import cycles,
no dispatch on task names, library modules independent of recipes and the CLI."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "deltatune"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60


def modules():
    for path in sorted(SRC.rglob("*.py")):
        name = ".".join(("deltatune", *path.relative_to(SRC).with_suffix("").parts))
        yield name.removesuffix(".__init__"), path, ast.parse(path.read_text(), str(path))


def imports(name: str, tree: ast.AST, is_package: bool) -> set[str]:
    """Every deltatune module this one imports, at the top or inside a function."""
    found = set()
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in type_only:  # imports for type checkers only never run
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("deltatune")}


def test_files_and_functions_stay_small():
    big_files, long_functions = [], []
    for name, path, tree in modules():
        lines = len(path.read_text().splitlines())
        if lines > MAX_FILE_LINES:
            big_files.append(f"{name}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name}: {length} lines")
    assert not big_files, big_files
    assert not long_functions, long_functions


def test_no_import_cycles():
    graph = {}
    all_names = {name for name, _, _ in modules()}
    for name, path, tree in modules():
        targets = imports(name, tree, path.name == "__init__.py")
        graph[name] = {t for t in targets if t in all_names and t != name}
    # a package's __init__ is not an edge source for its submodules' own imports
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_library_never_imports_recipes_or_cli_and_nothing_dispatches_on_task_names():
    offenders = []
    for name, path, tree in modules():
        text = path.read_text()
        for needle in ("cfg.task ==", "cfg.task !=", "task == \"sft\"", "task == \"classify\"",
                       "saved_dir == \"model\"", "INSERTS_TOKENS"):
            if needle in text:
                offenders.append(f"{name}: {needle}")
        if name.startswith(("deltatune.recipes", "deltatune.cli")) or name == "deltatune.__main__":
            continue
        bad = {m for m in imports(name, tree, path.name == "__init__.py")
               if m.startswith(("deltatune.recipes", "deltatune.cli"))}
        if bad:
            offenders.append(f"{name} imports {sorted(bad)}")
    assert not offenders, offenders


def test_recipes_are_thin():
    for path in (SRC / "recipes").glob("*.py"):
        if path.name != "__init__.py":
            assert len(path.read_text().splitlines()) <= 170, path.name
