"""The package's shape, read from its source (ast): no import cycles, no function-local imports of
odecore's own modules, no imports of another module's private names, no function over 80 lines."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "odecore"
MAX_FUNCTION_LINES = 80
EXTENSION = "odecore._C"  # the compiled module, not a source file
# where a private name may be imported from: the shared preparation and the step control
PRIVATE_OK = {"odecore._problem", "odecore.ops.control"}
# command-line dispatch imports each subcommand's module lazily (start-up time), nothing else may
LAZY_IMPORTS_OK = {"odecore.__main__", "odecore.apps.cli", "odecore.bench.cli"}


def _module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name):
    return MODULES[name].name == "__init__.py"


def _resolve(module, node):
    """The absolute module an ImportFrom in `module` names (None for a relative import past the top)."""
    if node.level == 0:
        return node.module
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module, tree):
    """(node, imported odecore modules, imported names and the module they come from, in a function)."""
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names if alias.name.split(".")[0] == "odecore"]
                found.append((child, targets, [], inner))
            elif isinstance(child, ast.ImportFrom):
                source = _resolve(module, child)
                if source is None or source.split(".")[0] != "odecore":
                    continue
                modules = set(MODULES) | {EXTENSION}
                submodules = [source + "." + a.name for a in child.names if source + "." + a.name in modules]
                names = [a.name for a in child.names if source + "." + a.name not in modules]
                # `from . import mod` imports mod (its package only implicitly, as every import does)
                targets = [m for m in submodules if m in MODULES] + ([source] if names and source in MODULES else [])
                found.append((child, targets, [(source, n) for n in names], inner))
            visit(child, inner)

    visit(tree, False)
    return found


TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}
IMPORTS = {name: _imports(name, tree) for name, tree in TREES.items()}


def test_the_package_is_found():
    assert "odecore.api" in MODULES and "odecore.ops.control" in MODULES and len(MODULES) > 40


def test_no_import_cycles():
    graph = {
        name: {t for _, targets, _, lazy in found if not lazy for t in targets if t != name}
        for name, found in IMPORTS.items()
    }
    state, stack, cycles = {}, [], []

    def walk(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            walk(name)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_function_local_imports_of_the_package():
    offenders = [
        "%s:%d imports %s inside a function" % (MODULES[name].relative_to(PACKAGE.parent), node.lineno, targets)
        for name, found in IMPORTS.items()
        if name not in LAZY_IMPORTS_OK
        for node, targets, _, lazy in found
        if lazy and targets
    ]
    assert not offenders, "\n".join(offenders)


def test_no_private_names_from_other_modules():
    offenders = [
        "%s:%d imports %s from %s" % (MODULES[name].relative_to(PACKAGE.parent), node.lineno, imported, source)
        for name, found in IMPORTS.items()
        for node, _, names, _ in found
        for source, imported in names
        if imported.startswith("_") and not imported.startswith("__") and source not in PRIVATE_OK
    ]
    assert not offenders, "\n".join(offenders)


def _functions():
    for name, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield name, node


def test_functions_are_short():
    long = [
        "%s:%d %s is %d lines" % (MODULES[name].relative_to(PACKAGE.parent), node.lineno, node.name, length)
        for name, node in _functions()
        if (length := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES
    ]
    assert not long, "functions over %d lines:\n%s" % (MAX_FUNCTION_LINES, "\n".join(long))


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from .a import b\nfrom . import a", {"odecore.x.a"}),
        ("import odecore.x.a\ndef f():\n    from .a import b", {"odecore.x.a"}),
    ],
)
def test_the_reader_resolves_imports(source, expected, monkeypatch):
    monkeypatch.setitem(MODULES, "odecore.x", PACKAGE / "x" / "__init__.py")
    monkeypatch.setitem(MODULES, "odecore.x.a", PACKAGE / "x" / "a.py")
    monkeypatch.setitem(MODULES, "odecore.x.c", PACKAGE / "x" / "c.py")
    found = _imports("odecore.x.c", ast.parse(source))
    assert {t for _, targets, _, _ in found for t in targets} == expected
    assert any(lazy for *_, lazy in found) == ("def f" in source)
