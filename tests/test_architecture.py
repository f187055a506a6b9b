"""labkit's structure, as docs/architecture.md states it: layers, no cycles, imports at the top, no private names
of other modules, small modules; and the learner notebooks calling torch more than labkit."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "labkit"
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of labkit."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    is_pkg = MODULES[module].name == "__init__.py"
    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, ast.AST, bool]]:
    """(imported labkit module, the import node, whether it sits inside a function) for each labkit import."""
    tree = ast.parse(MODULES[module].read_text())
    inside: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            src = _resolve(module, node)
            if src != "labkit" and not src.startswith("labkit."):
                continue
            for alias in node.names:
                sub = f"{src}.{alias.name}"
                found.append((sub if sub in MODULES else src, node, id(node) in inside))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "labkit" or alias.name.startswith("labkit."):
                    found.append((alias.name, node, id(node) in inside))
    return found


def _layers() -> list[set[str]]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no ```layers block"
    return [set(line.split()) for line in block.group(1).strip().splitlines()]


def _package(module: str) -> str:
    parts = module.split(".")
    if module == "labkit":
        return "root"
    if parts[1] == "__main__":
        return "main"
    return parts[1]


def test_every_package_is_on_a_layer():
    packages = {_package(m) for m in MODULES} - {"root", "main"}
    placed = set().union(*_layers())
    assert packages == placed, f"on no layer: {sorted(packages - placed)}; no such package: {sorted(placed - packages)}"


def test_imports_follow_the_layers():
    floor = {pkg: i for i, line in enumerate(_layers()) for pkg in line}
    wrong = []
    for module in MODULES:
        mine = _package(module)
        for target, node, _ in _imports(module):
            theirs = _package(target)
            if mine == "main" or theirs == mine:
                continue
            if mine == "root":
                if target != "labkit.core.settings":
                    wrong.append(f"{module} imports {target}: labkit/__init__.py imports only labkit.core.settings")
            elif theirs == "main" or (theirs != "root" and floor[theirs] >= floor[mine]):
                wrong.append(f"{module}:{node.lineno} imports {target} ({theirs} is not below {mine})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    graph = {m: {t for t, _, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [m, t]) if t in path else f"{m} -> {t}")
            elif t not in state:
                visit(t, path + [m])
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m, [])
    assert not cycles, "\n".join(cycles)


def test_labkit_imports_sit_at_the_top_of_a_module():
    inside = [f"{m}:{node.lineno} imports {t}" for m in MODULES for t, node, fn in _imports(m) if fn]
    assert not inside, "move these to the top of their module:\n" + "\n".join(inside)


def test_no_module_uses_another_modules_private_names():
    wrong = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                src = _resolve(module, node)
                if src != "labkit" and not src.startswith("labkit."):
                    continue
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        wrong.append(f"{module}:{node.lineno} imports {src}.{a.name}")
                    if f"{src}.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = f"{src}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("labkit") and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and aliases[node.value.id] != module and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                wrong.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not wrong, "\n".join(wrong)


def test_only_settings_reads_the_environment():
    """labkit.core.settings parses every variable strictly; elsewhere os.environ is only written (the CLI's --fast,
    hub check's read-only cache), never read: os.environ[...] as a target, nothing else."""
    wrong = []
    for module, path in MODULES.items():
        if module == "labkit.core.settings":
            continue
        tree = ast.parse(path.read_text())
        stores = {id(t.value) for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets
                  if isinstance(t, ast.Subscript)}
        oses = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
                if a.name == "os"}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "os" and \
                    {a.name for a in node.names} & {"environ", "getenv", "environb"}:
                wrong.append(f"{module}:{node.lineno} imports the environment from os")
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in oses
                    and node.attr in ("environ", "getenv", "environb") and id(node) not in stores):
                wrong.append(f"{module}:{node.lineno} reads the environment")
    assert not wrong, "read settings through labkit.core.settings:\n" + "\n".join(wrong)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_500_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)} has {lines} lines; split it by idea"


# --- learners write torch ---------------------------------------------------------------------------------------

LIBRARIES = ("torch", "numpy", "transformers", "openvino", "nncf", "onnxruntime", "sklearn", "matplotlib", "pandas",
             "labkit")
MAX_LABKIT_SHARE = 0.40  # of the library call sites in the learner edition
HARNESS = "labkit.course.checks."  # the exercise harness: the notebooks' test cells
MAX_LABKIT_FUNCTIONS = 80  # distinct labkit functions the learner edition calls


def _library_calls(path: Path) -> list[tuple[str, str]]:
    """(library, dotted call) for every call in a notebook's code cells whose root name was imported from one of
    LIBRARIES: `quantize.fake_quantize(...)` after `from labkit.quant import quantize` is ("labkit", ...). Inside a
    function, a parameter of the same name (`model` in `def recover(model, ...)`) is the parameter, not the import."""
    names: dict[str, str] = {}
    calls: list[tuple[str, str]] = []

    def visit(node: ast.AST, shadowed: frozenset) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            params = {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if x}
            shadowed = shadowed | params
        if isinstance(node, ast.Call):
            f, dotted = node.func, []
            while isinstance(f, ast.Attribute):
                dotted.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name) and f.id in names and f.id not in shadowed:
                lib, module = names[f.id]
                calls.append((lib, ".".join([module] + dotted[::-1])))
        for child in ast.iter_child_nodes(node):
            visit(child, shadowed)

    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "\n".join("pass" if line.lstrip().startswith(("%", "!")) else line
                           for line in "".join(cell["source"]).splitlines())
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in LIBRARIES:
                        root = a.name if a.asname else a.name.split(".")[0]
                        names[a.asname or root] = (a.name.split(".")[0], root)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIBRARIES:
                for a in node.names:
                    names[a.asname or a.name] = (node.module.split(".")[0], f"{node.module}.{a.name}")
        visit(tree, frozenset())
    return calls


def test_learners_call_torch_more_than_labkit():
    """The learner edition calls labkit for plumbing only: at most 40% of its library call sites, at most 80
    distinct functions (issue 33's measure). The exercise harness (`labkit.course.checks`: check, use, predict,
    measured, progress) is counted apart: it is the course's test cells, which MIT's labs define in the notebook."""
    calls = [c for path in sorted((ROOT / "notebooks").glob("*.ipynb")) for c in _library_calls(path)]
    ours = [name for lib, name in calls if lib == "labkit"]
    plumbing = [name for name in ours if not name.startswith(HARNESS)]
    share = len(plumbing) / (len(calls) - (len(ours) - len(plumbing)))
    assert share <= MAX_LABKIT_SHARE, (f"labkit's plumbing is {share:.0%} of the library calls in notebooks/ "
                                       f"(the exercise harness apart)")
    assert len(set(ours)) <= MAX_LABKIT_FUNCTIONS, f"{len(set(ours))} distinct labkit functions: {sorted(set(ours))}"
