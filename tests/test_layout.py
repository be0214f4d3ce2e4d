"""The package's shape: API functions keep their names whatever is imported, imports flow one way (no circle),
and only ftkit/internals.py reaches into other libraries' private names."""
import ast
import subprocess
import sys
import types

from conftest import REPO

PACKAGE = REPO / "ftkit"


def _module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _ftkit_imports(path) -> set[str]:
    """ftkit modules a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ftkit.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ftkit":
            if node.module == "ftkit":  # from ftkit import data, model as M
                found |= {f"ftkit.{a.name}" for a in node.names if (PACKAGE / f"{a.name}.py").exists()
                          or (PACKAGE / a.name).is_dir()}
            else:
                found.add(node.module)
    return found


def test_api_functions_keep_their_names_after_their_modules_are_imported():
    code = ("import types, ftkit\n"
            "import ftkit.training, ftkit.planning, ftkit.merging, ftkit.generation, ftkit.launching\n"
            "import ftkit.training as T\n"
            "assert isinstance(T, types.ModuleType) and T.train is not ftkit.train\n"
            "for name in ('train', 'plan', 'merge', 'generate', 'launch', 'convert', 'preview'):\n"
            "    assert isinstance(getattr(ftkit, name), types.FunctionType), name\n"
            "print('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == "ok", p.stderr
    import ftkit

    assert type(ftkit) is types.ModuleType, "no class swap on the package"


def test_no_import_circle():
    graph = {_module_name(f): {m for m in _ftkit_imports(f)} for f in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in deps if m in graph and m != name} for name, deps in graph.items()}
    graph.pop("ftkit", None)  # the package's API functions import the engine on call; nothing imports them back
    for deps in graph.values():
        deps.discard("ftkit")
    done, path = set(), []

    def visit(name):
        if name in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        path.append(name)
        for dep in sorted(graph[name]):
            visit(dep)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_the_engine_never_imports_the_notebook_layer():
    engine = [f for f in PACKAGE.glob("*.py") if f.name not in ("__init__.py", "cli.py")]
    for f in engine:
        text = f.read_text(encoding="utf-8")
        assert "IPython" not in text and "ipywidgets" not in text, f.name
        assert not any(m.startswith("ftkit.notebook") for m in _ftkit_imports(f)), f.name


def test_private_names_of_other_libraries_only_in_internals():
    """`lib._private` (a module or object of another package) appears only in ftkit/internals.py."""
    own = {"self", "cls", "run", "M", "launch", "panel", "os", "sys"}  # ftkit's own objects, os._exit, sys._getframe
    offenders = []
    for f in PACKAGE.rglob("*.py"):
        if f.name == "internals.py":
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                root = node.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                name = root.id if isinstance(root, ast.Name) else None
                if name is None or name in own or name.startswith("_"):
                    continue
                offenders.append(f"{f.relative_to(REPO)}:{node.lineno}: {name}...{node.attr}")
    assert not offenders, offenders
