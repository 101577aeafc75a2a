"""The shape DESIGN.md promises, checked on the source: the package order (every import, lazy ones
included, goes to the same or a lower layer), no import cycles between modules or packages, no
dispatch on task names, task folders independent of each other, and config loading without torch."""

import ast
import subprocess
import sys

from helpers.paths import ROOT

SRC = ROOT / "src" / "deltatune"

# Lowest first. A module may import its own package and the packages of lower layers only.
LAYERS = [
    {"deltatune", "errors", "io", "log", "registry", "results"},  # leaves everything may import
    {"metrics"},
    {"models"},
    {"reports"},
    {"losses", "methods"},
    {"tasks"},  # the task registry itself (tasks/__init__.py); the task folders sit above runs
    {"config"},
    {"inference"},
    {"training"},
    {"data"},
    {"codeeval"},
    {"checks"},
    {"runs"},
    {"tasks.*"},  # one node per task folder: tasks.classify, tasks.sft, ...
    {"compare"},
    {"cli", "__main__"},
]


def modules():
    for path in sorted(SRC.rglob("*.py")):
        name = ".".join(("deltatune", *path.relative_to(SRC).with_suffix("").parts))
        yield name.removesuffix(".__init__"), path, ast.parse(path.read_text(), str(path))


def imports(name: str, tree: ast.AST, is_package: bool) -> set[str]:
    """Every deltatune module this one imports, at the top or inside a function."""
    found = set()
    type_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for n in ast.walk(block)
    }
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
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.startswith("deltatune.")
        ):
            found.add(node.value.partition(":")[0])  # lazy("deltatune.x.y:fn") references
    return {m for m in found if m.startswith("deltatune")}


def package_of(module: str) -> str:
    """The package node of a module: its top-level package, each task folder on its own."""
    parts = module.split(".")[1:]
    if not parts:
        return "deltatune"
    if parts[0] == "tasks" and len(parts) > 1:
        return f"tasks.{parts[1]}"
    return parts[0]


def layer_of(package: str) -> int:
    for i, layer in enumerate(LAYERS):
        if package in layer or (package.startswith("tasks.") and "tasks.*" in layer):
            return i
    raise AssertionError(f"package {package} is in no layer of tests/contracts/test_architecture.py: add it")


def edges() -> dict[str, set[str]]:
    names = {name for name, _, _ in modules()}
    graph = {}
    for name, path, tree in modules():
        targets = set()
        for t in imports(name, tree, path.name == "__init__.py"):
            while t and t not in names:  # `from pkg.mod import fn` names fn: keep the module
                t = t.rpartition(".")[0]
            if t and t != name:
                targets.add(t)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[str]:
    seen, stack, found = set(), [], []

    def visit(node):
        if node in stack:
            found.append(" -> ".join(stack[stack.index(node) :] + [node]))
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
    return found


def test_every_import_goes_down_the_package_order():
    offenders = []
    for name, targets in edges().items():
        here = package_of(name)
        for t in targets:
            there = package_of(t)
            if there != here and layer_of(there) > layer_of(here):
                offenders.append(f"{name} ({here}) imports {t} ({there}), a higher layer")
    assert not offenders, "\n".join(sorted(offenders))


def test_no_import_cycles_between_modules_or_packages():
    graph = edges()
    assert not cycles(graph), cycles(graph)
    packages: dict[str, set[str]] = {}
    for name, targets in graph.items():
        packages.setdefault(package_of(name), set()).update(package_of(t) for t in targets)
    for p, ts in packages.items():
        ts.discard(p)
    assert not cycles(packages), cycles(packages)


def test_task_folders_never_import_each_other_and_nothing_dispatches_on_task_names():
    offenders, graph = [], edges()
    for name, path, tree in modules():
        text = path.read_text()
        for needle in (
            "cfg.task ==",
            "cfg.task !=",
            'task == "sft"',
            'task == "classify"',
            'saved_dir == "model"',
            "INSERTS_TOKENS",
        ):
            if needle in text:
                offenders.append(f"{name}: {needle}")
        here = package_of(name)
        for t in graph[name]:
            there = package_of(t)
            if here.startswith("tasks.") and there.startswith("tasks.") and there != here:
                offenders.append(f"{name} imports another task folder: {t}")
    assert not offenders, offenders


def test_method_and_task_folders_register_without_torch():
    """Validating a config imports the one task and the one method it names, and no torch."""
    code = (
        "import sys\nfrom deltatune.config import validate_config\n"
        "cfg = validate_config({'task': 'sft', 'method': {'name': 'lora'}, 'data': {'train': 'x.jsonl'}})\n"
        "loaded = sorted(m for m in sys.modules "
        "if m.startswith(('deltatune.tasks.', 'deltatune.methods.')))\n"
        "print(repr(([m for m in ('torch', 'transformers') if m in sys.modules], loaded)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    heavy, loaded = eval(out)  # noqa: S307 - our own subprocess's repr
    assert heavy == []
    assert loaded == [
        "deltatune.methods.lora",
        "deltatune.methods.lora.options",
        "deltatune.methods.registry",
        "deltatune.tasks.sft",
        "deltatune.tasks.sft.options",
    ]


def test_option_names_kept_without_torch_match_the_loss_tables():
    from deltatune.losses.classification import CLASSIFICATION_LOSSES
    from deltatune.losses.classification import MULTI_LABEL_LOSSES as LOSS_MULTI
    from deltatune.losses.preference import DPO_LOSSES
    from deltatune.tasks.classify.options import MULTI_LABEL_LOSSES, SINGLE_LABEL_LOSSES
    from deltatune.tasks.preference.options import DPO_LOSS_NAMES

    assert (*SINGLE_LABEL_LOSSES, *MULTI_LABEL_LOSSES) == tuple(CLASSIFICATION_LOSSES)
    assert MULTI_LABEL_LOSSES == LOSS_MULTI
    assert DPO_LOSS_NAMES == tuple(DPO_LOSSES)


def test_every_method_and_task_is_one_folder_with_the_same_shape():
    for folder in sorted(p for p in (SRC / "methods").iterdir() if p.is_dir() and p.name != "__pycache__"):
        assert {"__init__.py", "options.py", "model.py"} <= {f.name for f in folder.glob("*.py")}, folder
    for folder in sorted(p for p in (SRC / "tasks").iterdir() if p.is_dir() and p.name != "__pycache__"):
        assert {"__init__.py", "options.py", "evaluate.py"} <= {f.name for f in folder.glob("*.py")}, folder


def test_task_jobs_are_thin():
    """A task's job only wires parts from the shared rooms and its own folder: counted in statements (the
    formatter decides the lines), at most 110 each."""
    jobs = [
        *(SRC / "tasks").glob("*/job.py"),
        SRC / "tasks" / "preference" / "reward.py",
        SRC / "tasks" / "preference" / "dpo.py",
    ]
    for path in jobs:
        statements = sum(isinstance(n, ast.stmt) for n in ast.walk(ast.parse(path.read_text())))
        assert statements <= 110, f"{path}: {statements} statements"
