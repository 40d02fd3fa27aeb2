"""alexnet.data imports only downward: no import cycle among its modules, nothing from above it (train,
evaluate, the commands), and no module reaching into another's private names.

Read from the source with `ast`, imports inside functions included: a lazy import that closes a
circle is still a circle, and one that reaches up still ties the data package to what sits above it.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "alexnet" / "data"
PACKAGE = "alexnet.data"

# the layers below alexnet.data: the package itself (for __version__), the user-facing error type
# and file I/O (atomic writes, locks, caches); each of them imports nothing of alexnet but these
LOWER = {"alexnet", "alexnet.errors", "alexnet.fileio", "alexnet.process"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Whether `name` (dotted, under alexnet) is a module or package in this tree."""
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of `from {'.' * level}{target} import ...` written in `module`."""
    if level == 0:
        return target or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports(path: Path) -> tuple[set[str], list[tuple[str, str]], list[str]]:
    """(alexnet modules `path` imports, [(module, private name)] it imports from them, and
    'module._name' attribute uses through a name bound to an alexnet module)."""
    module = module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    targets: set[str] = set()
    private: list[tuple[str, str]] = []
    bound: dict[str, str] = {}  # local name -> alexnet module it refers to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "alexnet":
                    targets.add(alias.name)
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else "alexnet"
        elif isinstance(node, ast.ImportFrom):
            source = resolve(module, path.name == "__init__.py", node.level, node.module)
            if source.split(".")[0] != "alexnet":
                continue
            for alias in node.names:
                child = f"{source}.{alias.name}"
                if is_module(child):  # `from . import store`: the module store
                    targets.add(child)
                    bound[alias.asname or alias.name] = child
                else:
                    targets.add(source)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append((source, alias.name))
    reaches = [f"{bound[node.value.id]}.{node.attr}" for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
               and node.attr.startswith("_") and not node.attr.startswith("__")]
    return targets, private, reaches


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p)[0] for p in sorted(DATA.glob("*.py"))}


def test_the_data_package_is_found():
    modules = graph()
    assert {"alexnet.data.sources", "alexnet.data.store", "alexnet.data.loader"} <= set(modules)


def test_data_imports_nothing_above_it():
    upward = sorted(f"{m} imports {t}" for m, targets in graph().items() for t in targets
                    if t != PACKAGE and not t.startswith(PACKAGE + ".") and t not in LOWER)
    assert not upward, upward


def test_the_lower_layers_import_nothing_above_them():
    for name in sorted(LOWER):
        path = ROOT.joinpath(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        assert imports(path)[0] <= LOWER, (name, imports(path)[0] - LOWER)


def test_no_import_cycle_in_data():
    modules = graph()
    edges = {m: {t for t in targets if t in modules and t != m} for m, targets in modules.items()}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, cycles


def test_no_module_uses_another_modules_private_names():
    found = []
    for p in sorted(DATA.glob("*.py")):
        _, private, reaches = imports(p)
        found += [f"{module_name(p)}: from {source} import {name}" for source, name in private]
        found += [f"{module_name(p)}: {use}" for use in reaches]
    assert not found, found
