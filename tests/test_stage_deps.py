"""Stage deps that are provably complete (issue 16).

DVC re-runs a stage only when one of its declared ``deps`` changed, so a
library file a stage runs but does not declare is a silent staleness bug: edit
it and ``dvc repro`` keeps the old outputs. These tests read every stage of
``dvc.yaml`` and ``foundation/dvc.yaml``, follow the ``failmap`` imports of the
script in its ``cmd`` (statically, with ``ast``: every import statement,
lazy ones inside functions included, since they still run) through
``src/failmap/``, and fail naming each library file a stage runs but does not
list. The same import graph must have no cycles.
"""
from __future__ import annotations

import ast
import os
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "failmap"
PIPELINES = ["dvc.yaml", "foundation/dvc.yaml"]

# Library files a stage may run without declaring them, each with the reason
# a change to it cannot alter any stage output. Keep this minimal. (Empty: the
# MLflow code, src/failmap/tracking.py, once excluded as logging-only, now runs
# in one stage, track, which lists it: a change to it logs the execution again.)
NOT_A_DEP: dict[str, str] = {}


# --- the import graph ---------------------------------------------------------

def package_modules(src: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under ``src``: dotted name -> its file
    (a package's is its ``__init__.py``)."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute name of ``from <level dots><module> import ...`` in ``importer``."""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if level > 1:
        base = base[:-(level - 1)]
    if not base:
        raise ImportError(f"relative import beyond the top-level package in {importer}")
    return ".".join(base + ([module] if module else []))


def import_graph(src: Path, package: str = PACKAGE) -> tuple[dict[str, set[str]], dict[str, Path]]:
    """module -> the package modules it imports directly, and module -> file."""
    modules = package_modules(src, package)
    graph = {}
    for name, path in modules.items():
        graph[name] = module_targets(path.read_text(), modules, name, path.name == "__init__.py")
    return graph, modules


def module_targets(source: str, modules: dict[str, Path], importer: str = "__main__",
                   is_package: bool = False) -> set[str]:
    """The package modules ``source`` imports directly, from an import statement
    anywhere in it (module level, functions, classes, ``if``/``try``): ``import
    a.b`` targets ``a.b``; ``from a import b`` targets ``a.b`` when that is a
    module, else ``a`` (b is an attribute of it); relative imports resolve
    against ``importer``. Parent packages, which Python initialises on the way,
    are added by ``closure``, not here: a package's ``__init__`` importing its
    own submodules is no cycle."""
    targets = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name if alias.name in modules else _known_prefix(alias.name, modules)
                if name:
                    targets.add(name)
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(importer, is_package, node.level, node.module) if node.level
                    else node.module)
            if base not in modules:
                prefix = _known_prefix(base, modules)
                if prefix:
                    targets.add(prefix)
                continue
            for alias in node.names:
                child = f"{base}.{alias.name}"
                targets.add(child if child in modules else base)
    targets.discard(importer)
    return targets


def _known_prefix(name: str, modules: dict[str, Path]) -> str | None:
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def closure(graph: dict[str, set[str]], roots: set[str]) -> set[str]:
    """Every module that importing ``roots`` runs: their imports, transitively,
    and every package above each of them (``import a.b`` runs ``a/__init__``)."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in graph:
            continue
        seen.add(name)
        todo.extend(graph[name])
        parts = name.split(".")
        todo.extend(".".join(parts[:end]) for end in range(1, len(parts)))
    return seen


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


# --- the stages ---------------------------------------------------------------

def stage_script(cmd: str) -> str:
    """The script a ``python <script>.py ...`` stage command runs."""
    words = shlex.split(cmd)
    scripts = [word for word in words if word.endswith(".py")]
    assert words and Path(words[0]).name.startswith("python") and len(scripts) == 1, \
        f"not a 'python <script>.py' command: {cmd!r}"
    return scripts[0]


def pipeline_stages():
    """(pipeline, stage name, working dir relative to ROOT, stage dict) for every stage."""
    for pipeline in PIPELINES:
        spec = yaml.safe_load((ROOT / pipeline).read_text())
        for name, stage in spec["stages"].items():
            wdir = (Path(pipeline).parent / stage.get("wdir", ".")).as_posix()
            yield pipeline, name, wdir, stage


STAGES = list(pipeline_stages())


def _repo_path(wdir: str, path: str) -> Path:
    """A path written relative to a stage's working dir, as a path under ROOT."""
    return (ROOT / wdir / path).resolve()


def covered(required: Path, deps: list[Path]) -> bool:
    """A dep covers a file when it is the file or a directory above it."""
    return any(required == dep or dep in required.parents for dep in deps)


def missing_deps(wdir: str, stage: dict, graph, modules) -> list[str]:
    """The library files (and the script) the stage runs but does not list,
    written as that pipeline writes paths (relative to the stage's wdir)."""
    script = stage_script(stage["cmd"])
    script_path = _repo_path(wdir, script)
    runs = closure(graph, module_targets(script_path.read_text(), modules))
    required = {script_path} | {modules[name].resolve() for name in runs}
    required -= {(ROOT / path).resolve() for path in NOT_A_DEP}
    deps = [_repo_path(wdir, next(iter(d)) if isinstance(d, dict) else d) for d in stage.get("deps", [])]
    base = (ROOT / wdir).resolve()
    return sorted(Path(os.path.relpath(path, base)).as_posix() for path in required if not covered(path, deps))


@pytest.mark.parametrize("pipeline, name, wdir, stage", STAGES,
                         ids=[f"{pipeline}:{name}" for pipeline, name, _, _ in STAGES])
def test_stage_deps_cover_every_library_file_it_runs(pipeline, name, wdir, stage):
    graph, modules = import_graph(SRC)
    missing = missing_deps(wdir, stage, graph, modules)
    assert not missing, (f"{pipeline} stage '{name}' runs these files but does not list them in deps "
                         f"(paths relative to {wdir}/):\n  - " + "\n  - ".join(missing))


def test_all_stages_checked():
    """Both pipelines were read, and every stage is a python script."""
    assert {pipeline for pipeline, *_ in STAGES} == set(PIPELINES)
    assert len(STAGES) >= 10
    for pipeline, name, wdir, stage in STAGES:
        assert _repo_path(wdir, stage_script(stage["cmd"])).is_file(), f"{pipeline}:{name}"


def test_exclusions_are_real_and_import_nothing_of_the_package():
    graph, modules = import_graph(SRC)
    by_file = {path.resolve(): name for name, path in modules.items()}
    for path, reason in NOT_A_DEP.items():
        assert reason.strip(), path
        name = by_file.get((ROOT / path).resolve())
        assert name is not None, f"excluded {path} is not a module of src/{PACKAGE}"
        assert not graph[name], f"excluded {path} imports {sorted(graph[name])}: those would go unchecked"


def test_no_import_cycle_in_src():
    graph, _ = import_graph(SRC)
    cycles = import_cycles(graph)
    assert not cycles, "import cycles in src/failmap (each line one cycle):\n  " + \
        "\n  ".join(" <-> ".join(cycle) for cycle in cycles)


# --- the machinery can fail ---------------------------------------------------

def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_closure_follows_lazy_transitive_relative_and_package_imports(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    import pkg.b  # lazy: still runs\n",
        "pkg/b.py": "from pkg.c import g\n",
        "pkg/c.py": "g = 1\n",
        "pkg/d.py": "",                                   # imported by nobody: outside every closure
        "pkg/sub/__init__.py": "from . import leaf\n",    # relative, names a module
        "pkg/sub/leaf.py": "from ..c import g\n",         # relative, two levels up
        "pkg/e.py": "from pkg import sub\n",              # `from package import subpackage`
        "pkg/f.py": "class K:\n    def m(self):\n        from .sub.leaf import x\n",
    })
    graph, modules = import_graph(tmp_path, "pkg")
    assert set(modules) == {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.sub", "pkg.sub.leaf", "pkg.e", "pkg.f"}
    assert closure(graph, {"pkg.a"}) == {"pkg", "pkg.a", "pkg.b", "pkg.c"}
    assert closure(graph, {"pkg.c"}) == {"pkg", "pkg.c"}
    assert closure(graph, {"pkg.e"}) == {"pkg", "pkg.e", "pkg.sub", "pkg.sub.leaf", "pkg.c"}
    # importing a submodule runs its package's __init__, and what that imports
    assert closure(graph, {"pkg.f"}) == {"pkg", "pkg.f", "pkg.sub", "pkg.sub.leaf", "pkg.c"}
    assert import_cycles(graph) == []


def test_cycle_detection_and_missing_deps_fail(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    from pkg import b\n",
        "pkg/b.py": "from pkg.a import f\n",
    })
    graph, modules = import_graph(tmp_path, "pkg")
    assert import_cycles(graph) == [["pkg.a", "pkg.b"]]
    script = "from pkg.a import f\n"
    runs = closure(graph, module_targets(script, modules))
    required = {modules[name] for name in runs}
    assert not covered(modules["pkg.b"], [modules["pkg.a"], tmp_path / "pkg" / "__init__.py"])
    assert covered(modules["pkg.b"], [tmp_path / "pkg"])
    assert required == {modules["pkg"], modules["pkg.a"], modules["pkg.b"]}
