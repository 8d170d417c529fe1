"""Every module imports on its own, and the package's import graph has no cycle.

The first test imports each module alone, in a process where no other module of the package
was imported before, so a module that only works after some other module happened to be
imported first fails here. The second test parses every module with ``ast`` (nothing is
imported) and looks for cycles among imports of kernelpot modules, at module level and inside
functions alike: a lazy import that breaks a cycle at run time still ties the two modules
together.
"""

import ast
import importlib.util
import json
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

PACKAGE = "kernelpot"
PACKAGE_DIR = Path(importlib.util.find_spec(PACKAGE).origin).parent


def module_files(package_dir=PACKAGE_DIR, package=PACKAGE):
    """Map each module name of the package to its source file (``__main__`` left out).

    Parameters
    ----------
    package_dir : Path
        Directory holding the package's ``__init__.py``.
    package : str
        The package's import name.

    Returns
    -------
    dict of str to Path
        ``{"kernelpot": .../__init__.py, "kernelpot.gp": .../gp.py, ...}``, sorted by name.
    """
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        relative = path.relative_to(package_dir)
        # only directories that are regular packages, all the way down
        parents = [package_dir.joinpath(*relative.parts[:k]) for k in range(len(relative.parts))]
        if not all((parent / "__init__.py").is_file() for parent in parents):
            continue
        parts = [package, *relative.with_suffix("").parts]
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return dict(sorted(modules.items()))


MODULES = module_files()


# One server process imports the package's third-party dependencies once (never the package
# itself), then forks a child per module: each child starts with no kernelpot module loaded,
# imports one module and reports. That costs ~0.1 s per module instead of the ~1 s of a new
# interpreter importing numpy, scipy, scikit-learn, ASE and Numba again (≈40 modules on two
# shared cores). Replies go to a private copy of the server's stdout, so nothing a dependency
# prints can garble them; a child's stdout and stderr go back with its reply. The preloading
# could hide a module that uses, say, ``scipy.linalg`` at import time after only ``import
# scipy``; test_package_imports_in_a_new_interpreter covers that for everything __init__ loads.
_FORK_SERVER = r"""
import importlib, json, os, signal, sys, traceback
replies = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
for dependency in sys.argv[1:]:
    try:
        importlib.import_module(dependency)
    except BaseException:
        pass  # not a module, or broken: the child that needs it reports that
while name := sys.stdin.readline().strip():
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        signal.alarm(300)
        code = 0
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    print(json.dumps({"returncode": code, "output": output}), file=replies, flush=True)
"""


def _dependencies(modules, package=PACKAGE):
    """Dotted names outside ``package`` that its modules import (candidates for preloading;
    ``from a import b`` gives ``a`` and ``a.b``, which may not be a module)."""
    names = set()
    for path in modules.values():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        except SyntaxError:
            continue  # its own import test reports it
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return sorted(name for name in names if name.split(".")[0] != package)


def _plain_import(name):
    result = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True,
                            text=True, timeout=300)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def import_alone(tmp_path_factory):
    """``import_alone(name) -> (returncode, output)``: import one module in a process where no
    module of the package was imported before (fork server on Linux, else a new
    interpreter per module)."""
    if not sys.platform.startswith("linux"):  # fork after numpy is unsafe on macOS
        yield _plain_import
        return
    log = tmp_path_factory.mktemp("imports") / "server.log"
    with open(log, "w") as server_stderr:
        server = subprocess.Popen([sys.executable, "-c", _FORK_SERVER, *_dependencies(MODULES)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=server_stderr, text=True)

        def run(name):
            server.stdin.write(name + "\n")
            server.stdin.flush()
            reply = server.stdout.readline()
            if not reply:
                pytest.fail(f"the import server died:\n{log.read_text()[-3000:]}")
            reply = json.loads(reply)
            return reply["returncode"], reply["output"]

        yield run
        server.stdin.close()
        server.wait(timeout=60)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_alone(name, import_alone):
    returncode, output = import_alone(name)
    assert returncode == 0, (
        f"`import {name}` fails when no other {PACKAGE} module was imported before "
        f"(exit code {returncode}):\n{output[-3000:]}")


def test_package_imports_in_a_new_interpreter():
    """The public entry point, literally alone: nothing preloaded, not even dependencies."""
    returncode, output = _plain_import(PACKAGE)
    assert returncode == 0, f"`import {PACKAGE}` fails in a new interpreter:\n{output[-3000:]}"


def _target(name, modules):
    """The module an import of ``name`` executes last: ``name`` itself, or its longest
    prefix that is a module of the package; ``None`` outside the package."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_edges(modules):
    """Imports of package modules by package modules, found with ``ast`` at any depth.

    ``import a.b`` and ``from a.b import x`` point to ``a.b`` (or ``a.b.x`` when ``x`` is a
    submodule); ``from a import b`` points to the submodule ``a.b`` when it exists and to the
    package ``a`` otherwise; relative imports are resolved against the importing module.
    Implicit imports of parent packages are not edges (every submodule has them).

    Parameters
    ----------
    modules : dict of str to Path
        As returned by :func:`module_files`.

    Returns
    -------
    dict of str to dict of str to list of int
        ``edges[importer][imported]`` is the list of line numbers of those imports.
    """
    edges = {name: {} for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package_parts = name.split(".") if is_package else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [_target(alias.name, modules) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package_parts[:len(package_parts) - node.level + 1]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.append(submodule if submodule in modules else _target(base, modules))
            for target in targets:
                if target is None or target == name:
                    continue
                lines = edges[name].setdefault(target, [])
                if node.lineno not in lines:
                    lines.append(node.lineno)
    return edges


def strongly_connected_components(graph):
    """Tarjan's algorithm (iterative); components of more than one node, each sorted."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def elementary_cycles(graph, component, limit=50):
    """Elementary cycles inside one strongly connected component, shortest first.

    Each cycle starts at its alphabetically smallest module and is listed once; at most
    ``limit`` cycles are enumerated (a large component can hold very many).
    """
    members = set(component)
    cycles = []
    for start in component:
        allowed = {m for m in members if m >= start}
        path = [start]

        def extend(node, allowed=allowed, path=path, start=start):
            for child in sorted(graph[node]):
                if len(cycles) >= limit:
                    return
                if child == start:
                    cycles.append([*path, start])
                elif child in allowed and child not in path:
                    path.append(child)
                    extend(child)
                    path.pop()

        extend(start)
    return sorted(cycles, key=lambda cycle: (len(cycle), cycle))


def find_cycles(modules, package=PACKAGE):
    """Return ``[(cycle, locations), ...]`` for the import cycles among ``modules``, shortest
    first; ``locations[k]`` gives the file and lines of the import ``cycle[k] -> cycle[k + 1]``.
    """
    edges = import_edges(modules)
    root = modules[package].parent.parent
    found = []
    for component in strongly_connected_components(edges):
        for cycle in elementary_cycles(edges, component):
            locations = [
                f"{modules[a].relative_to(root)}:{','.join(map(str, sorted(edges[a][b])))}"
                for a, b in pairwise(cycle)
            ]
            found.append((cycle, locations))
    return sorted(found, key=lambda item: (len(item[0]), item[0]))


def format_cycles(found):
    return "\n".join(f"  {' -> '.join(cycle)}    [{'; '.join(locations)}]"
                     for cycle, locations in found)


def test_import_graph_has_no_cycle():
    found = find_cycles(MODULES)
    assert not found, (
        f"{len(found)} import cycle(s) among {PACKAGE} modules (lazy imports count; each edge "
        f"located as file:lines):\n{format_cycles(found)}")


def test_cycle_finder_on_a_toy_package(tmp_path):
    """The graph builder resolves absolute, relative and from-package imports as documented."""
    root = tmp_path / "toy"
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from toy.a import A\n",
        "a.py": "A = 1\n\ndef f():\n    from toy import b\n",
        "b.py": "from . import __doc__\nfrom .sub import leaf\n",
        "c.py": "import toy.sub.leaf\nfrom toy.sub import thing\n",
        "sub/__init__.py": "thing = 0\n",
        "sub/leaf.py": "from ..c import x\n",
    }
    for relative, text in files.items():
        (root / relative).write_text(text)
    modules = module_files(root, "toy")
    assert list(modules) == ["toy", "toy.a", "toy.b", "toy.c", "toy.sub", "toy.sub.leaf"]
    edges = import_edges(modules)
    assert {name: sorted(targets) for name, targets in edges.items()} == {
        "toy": ["toy.a"],
        "toy.a": ["toy.b"],
        "toy.b": ["toy", "toy.sub.leaf"],
        "toy.c": ["toy.sub", "toy.sub.leaf"],
        "toy.sub": [],
        "toy.sub.leaf": ["toy.c"],
    }
    assert [cycle for cycle, _ in find_cycles(modules, "toy")] == [
        ["toy.c", "toy.sub.leaf", "toy.c"],
        ["toy", "toy.a", "toy.b", "toy"],
    ]
