"""The layers: every import in the project, function-level ones included, points down this order,
and no two modules import each other by any path.

    handlers  <-  models  <-  serving.run  <-  serving.build  <-  loadtest  <-  serving.perf
              <-  serving.scale  <-  serving.cli

handlers/ runs inside TorchServe's workers and imports nothing else of the project; models/ (the
folders and their spec) only handlers; loadtest/ (Locust) only what runs a server. The AST is read,
so an import inside a function counts as much as one at the top: a cycle hidden in a function is
still a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["handlers", "models", "serving.run", "serving.build", "loadtest", "serving.perf",
          "serving.scale", "serving"]  # the last: serving/__init__, __main__ and cli


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The deepest layer the module belongs to (serving.run.paths is in serving.run)."""
    found = [i for i, layer in enumerate(LAYERS)
             if module == layer or module.startswith(layer + ".")]
    assert found, module
    return max(found, key=lambda i: len(LAYERS[i]))


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for top in ("handlers", "models", "serving", "loadtest")
            for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts}


def nodes_that_run(node: ast.AST):
    """Every node, at any depth, except under `if TYPE_CHECKING:` (imports for annotations only)."""
    yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING":
            yield from (n for c in child.orelse for n in nodes_that_run(c))
            continue
        yield from nodes_that_run(child)


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere in it (`from a import b` counts a.b when that
    is a module, else a)."""
    found = set()
    for node in nodes_that_run(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                     else node.module for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import serving.run.paths` -> the module
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {m: imports_of(p, modules) - {m} for m, p in modules.items()}


def test_every_import_points_down_the_layers():
    upward = sorted(f"{m} ({LAYERS[layer_of(m)]}) imports {i} ({LAYERS[layer_of(i)]})"
                    for m, imported in graph().items() for i in imported
                    if layer_of(i) > layer_of(m))
    assert not upward, "\n".join(upward)


def test_no_module_imports_itself_back_through_others():
    edges = graph()
    cycles, index, low, stack, on_stack = [], {}, {}, [], set()

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
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
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_layer_check_sees_an_upward_import_hidden_in_a_function(tmp_path):
    """The walk must find imports inside functions, or the two tests above could not fail."""
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from serving.scale import deploy\n    return deploy\n")
    assert imports_of(path, project_modules()) == {"serving.scale.deploy"}


def test_handlers_import_nothing_else_of_the_project():
    outside = {m: sorted(i for i in imported if not i.startswith("handlers"))
               for m, imported in graph().items() if m.startswith("handlers")}
    assert not any(outside.values()), outside


def private_reaches(paths, names: set[str]) -> list[str]:
    """Where code reads or writes an attribute whose name is one of `names`."""
    return [f"{path.name}:{node.lineno} .{node.attr}" for path in paths
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
            if isinstance(node, ast.Attribute) and node.attr in names]


def test_only_handlers_reach_the_handler_machinery():
    """The rest of the project (tests included) calls a handler through SURFACE and the kind's
    hooks (handlers/base.py); the machinery between them is private, so it can change without
    breaking serving/, the benchmarks or the tests."""
    from handlers.base import ModelHandler

    machinery = {name for name in vars(ModelHandler) if name.startswith("_")
                 and not name.startswith("__")}
    machinery |= {name for name in vars(ModelHandler()) if name.startswith("_")}
    assert {"_read_request", "_reply", "_core_share"} <= machinery
    outside = [p for top in ("models", "serving", "loadtest", "tests")
               for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts]
    assert private_reaches(outside, machinery) == []


def test_the_machinery_check_sees_a_reach(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(handler):\n    return handler._read_request({}, None)\n")
    assert private_reaches([bad], {"_read_request"}) == ["bad.py:2 ._read_request"]


def test_the_health_checks_do_not_load_torch():
    """`python -m serving ready` and `grpc --probe` run every 10 s in each container: loading torch
    there cost 2.4 s of a core per check natively and outlasted the check's 10 s timeout under
    arm64 emulation, so the emulated TorchServe never turned healthy (CI, 2026-11-30)."""
    import subprocess
    import sys
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, serving.cli; print(sorted({m.split('.')[0] for m in "
         "sys.modules} & {'torch', 'numpy', 'onnxruntime', 'transformers', 'PIL'}))"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", f"the CLI's import loads {loaded}"
