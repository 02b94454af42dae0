"""Architecture rules of the `pose` and `flows` packages (issue 14, item 4), checked on the source:

* the import graph (every ``import`` / ``from ... import`` of every module, function-level lazy
  imports included, ``if TYPE_CHECKING:`` blocks excluded) has no cycle between modules;
* no module imports from a higher layer: core <- services <- stages (:data:`LAYERS`);
* no module imports another module's private ``_name`` (by ``from m import _name`` or ``m._name``);
* every ``dvc.yaml`` stage lists as deps the package modules its command imports (transitively),
  so ``dvc repro`` re-runs a stage when code it runs changes.

The graph is read with :mod:`ast` (nothing is imported), so the test takes about a second.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pose", "flows")

#: layers, lowest first; a module belongs to the longest matching prefix (``pose`` itself: the package
#: marker that switches telemetry off, importing nothing of ours)
LAYERS: dict[str, tuple[str, ...]] = {
    "core": ("pose.datasets.schema", "pose.datasets.formats", "pose.augment", "pose.targets", "pose.models",
             "pose.losses", "pose.decode", "pose.evaluate", "pose.io", "pose.codec", "pose.draw", "pose.device"),
    "services": ("pose.params", "pose.datasets", "pose.quality", "pose.train", "pose.registry", "pose.predict",
                 "pose.video", "pose.serving", "pose.crash", "pose.evaluate.scoring", "pose.evaluate.outputs",
                 "pose.export", "pose.presets", "pose.dvc_plots", "pose.serve"),
    "stages": ("pose.cli", "flows"),
}
RANK = {name: i for i, name in enumerate(LAYERS)}

#: the command-line dispatcher every stage runs through: a change to another command's options does not
#: re-run a stage, so it is not a stage dep (the code each command runs is, from its function body on)
DISPATCHER = "pose.cli"
#: the params check: a stage depending on its output (PARAMS_OK) runs it through the check_params stage,
#: whose deps cover it, so its imports are not that stage's own
PARAMS_MODULE, PARAMS_OK = "pose.params", "data/params_ok.json"


# ----------------------------------------------------------------------------- the graph

def _modules() -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of :data:`PACKAGES`."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            rel = f.relative_to(REPO).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _lazy_exports() -> dict[str, dict[str, str]]:
    """``{package: {name: module}}`` of the packages that import their submodules lazily through a
    module-level ``_EXPORTS = {"name": "pose.pkg.module", ...}`` (pose.models, pose.datasets):
    ``from pose.models import build_model`` runs pose.models.factory."""
    out = {}
    for name, f in MODULES.items():
        if f.name != "__init__.py":
            continue
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS"
                                                    for t in node.targets) and isinstance(node.value, ast.Dict):
                out[name] = {k.value: v.value for k, v in zip(node.value.keys, node.value.values)
                             if isinstance(k, ast.Constant) and isinstance(v, ast.Constant) and v.value in MODULES}
    return out


LAZY = _lazy_exports()


class _Imports(ast.NodeVisitor):
    """Import statements of one module (anywhere in it, except under ``if TYPE_CHECKING:``)."""

    def __init__(self, module: str):
        self.module = module
        self.edges: list[tuple[str, int]] = []            # (imported internal module, line)
        self.private: list[tuple[str, int]] = []          # ("module._name", line)
        self.aliases: dict[str, str] = {}                 # local name -> internal module it is bound to

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
                (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _internal(self, name: str) -> str | None:
        """The longest internal module ``name`` or a prefix of it names."""
        parts = name.split(".")
        while parts:
            cand = ".".join(parts)
            if cand in MODULES:
                return cand
            parts.pop()
        return None

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            target = self._internal(a.name)
            if target is not None:
                self.edges.append((target, node.lineno))
                self.aliases[a.asname or a.name.split(".")[0]] = target if a.asname else a.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            pkg = self.module.split(".") if _is_package(self.module) else self.module.split(".")[:-1]
            pkg = pkg[:len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([base] if base else []))
        source = self._internal(base) if base else None
        if source is None:
            return
        for a in node.names:
            sub = f"{base}.{a.name}"
            if sub in MODULES:                                 # from package import module
                self.edges.append((sub, node.lineno))
                self.aliases[a.asname or a.name] = sub
                continue
            self.edges.append((source, node.lineno))
            if a.name in LAZY.get(source, {}):                 # a lazily exported name runs its module
                self.edges.append((LAZY[source][a.name], node.lineno))
            if a.name.startswith("_") and not a.name.startswith("__") and source != self.module:
                self.private.append((f"{source}.{a.name}", node.lineno))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and node.value.id in self.aliases and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            target = self.aliases[node.value.id]
            if target in MODULES and target != self.module and f"{target}.{node.attr}" not in MODULES:
                self.private.append((f"{target}.{node.attr}", node.lineno))
        self.generic_visit(node)


def _scan(module: str) -> _Imports:
    v = _Imports(module)
    v.visit(ast.parse(MODULES[module].read_text(), filename=str(MODULES[module])))
    return v


SCANS = {m: _scan(m) for m in MODULES}
GRAPH: dict[str, set[str]] = {m: {t for t, _ in s.edges if t != m} for m, s in SCANS.items()}


def _line(a: str, b: str) -> int:
    return min(line for t, line in SCANS[a].edges if t == b)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a list of modules, first repeated at the end) per strongly connected component
    with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    out = []
    for comp in comps:                     # a shortest cycle through the component's first module
        members, start = set(comp), comp[0]
        prev: dict[str, str | None] = {start: None}
        frontier, found = [start], None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        found = v
                        break
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [found]
        while prev[path[-1]] is not None:
            path.append(prev[path[-1]])
        out.append(path[::-1] + [start])
    return out


def layer_of(module: str) -> str | None:
    """The layer of ``module``: the one with the longest prefix matching it (None: unassigned)."""
    if module == "pose":
        return "core"
    best, best_len = None, -1
    for layer, prefixes in LAYERS.items():
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = layer, len(p)
    return best


# ----------------------------------------------------------------------------- tests of the checker

def test_the_checker_finds_cycles_and_the_shortest_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]          # a self-import is not a cycle between modules
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert layer_of("pose.datasets.schema") == "core" and layer_of("pose.datasets.fetch") == "services"
    assert layer_of("flows.retrain") == "stages" and layer_of("pose.nowhere") is None and layer_of("pose") == "core"


def test_the_scanner_sees_lazy_imports_and_private_names():
    assert "pose.registry.promotion" in GRAPH["pose.cli"]                  # a function-level import
    v = _Imports("pose.registry.compare")
    v.visit(ast.parse("def f():\n    from pose.registry.rules import _EPS\n    import pose.io as io\n"
                      "    return io._HASH_BLOCK\nif TYPE_CHECKING:\n    import pose.cli\n"))
    assert [t for t, _ in v.edges] == ["pose.registry.rules", "pose.io"]
    assert [p for p, _ in v.private] == ["pose.registry.rules._EPS", "pose.io._HASH_BLOCK"]


# ----------------------------------------------------------------------------- the rules

def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if layer_of(m) is None)
    assert not missing, f"modules without a layer (add them to LAYERS in {Path(__file__).name}): {missing}"


def test_no_import_cycles():
    cycles = _cycles(GRAPH)
    lines = [" -> ".join(f"{a} (line {_line(a, b)})" for a, b in zip(c, c[1:])) + f" -> {c[-1]}" for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(lines)


def test_no_upward_imports():
    bad = []
    for a, targets in GRAPH.items():
        la = layer_of(a)
        for b in sorted(targets):
            lb = layer_of(b)
            if la is not None and lb is not None and RANK[lb] > RANK[la]:
                bad.append(f"{a} ({la}) imports {b} ({lb}) at line {_line(a, b)}")
    assert not bad, "imports from a higher layer (core <- services <- stages):\n" + "\n".join(bad)


def test_no_imports_of_another_modules_private_names():
    bad = [f"{m} line {line}: {name}" for m, s in SCANS.items() for name, line in s.private]
    assert not bad, "private names used outside their module:\n" + "\n".join(sorted(bad))


#: where params.yaml may be read as a dict (issue 22): the schema module and the command line (the flows
#: are outside ``pose/``); everywhere else the library takes typed sections (`pose.params.Params`)
PARAMS_DICT_MODULES = ("pose/params.py", "pose/cli.py")
#: ``params["`` / ``params['`` as in ``params["registry"]["rules"]`` (also ``model_params["``, ``eval_params["``)
_PARAMS_INDEX = re.compile(r"""params\[\s*["']""")


def test_the_library_reads_params_by_attribute_not_by_string_index():
    """Issue 22 item 1: below the CLI the code gets typed sections (``tp.lr``, ``ev.nms_kernel``), never the
    params dict indexed by strings (``params["train"]["lr"]``): a typo is an AttributeError at once, and
    pose.params' schema is the one list of keys. What is stored is written with `pose.params.Section.as_dict`
    and read back at its boundary (a registered model's settings: `pose.decode.persons.resolve_eval_params`)."""
    bad = []
    for f in MODULES.values():
        rel = f.relative_to(REPO).as_posix()
        if not rel.startswith("pose/") or rel in PARAMS_DICT_MODULES:
            continue
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if _PARAMS_INDEX.search(line):
                bad.append(f"{rel}:{i}: {line.strip()}")
    assert not bad, ("params indexed by string below the CLI (take the section and read its attributes):\n"
                     + "\n".join(bad))


def test_the_params_index_check_sees_what_it_must():
    for line in ('x = params["train"]["lr"]', "params['registry']", 'int(eval_params["max_people"])',
                 'model_params [ "width"]'):
        assert _PARAMS_INDEX.search(line.replace(" [ ", "[ ")), line
    for line in ("tp.lr", "params.train.lr", 'side.params.get("data.raw_dir")', "run.data.params"):
        assert not _PARAMS_INDEX.search(line), line


# ----------------------------------------------------------------------------- dvc.yaml stage deps

def _cli_commands() -> dict[str, ast.FunctionDef]:
    """``{command name: function}`` of the typer app in pose/cli.py."""
    tree = ast.parse(MODULES[DISPATCHER].read_text())
    out = {}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for dec in node.decorator_list:
            call = dec if isinstance(dec, ast.Call) else None
            func = call.func if call else dec
            if isinstance(func, ast.Attribute) and func.attr == "command":
                name = node.name.replace("_", "-")
                if call and call.args and isinstance(call.args[0], ast.Constant):
                    name = call.args[0].value
                out[name] = node
    return out


def _module_level_names() -> dict[str, str]:
    """``{name: internal module}`` of pose/cli.py's module-level ``from <module> import name``."""
    out = {}
    for node in ast.parse(MODULES[DISPATCHER].read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module in MODULES:
            for a in node.names:
                out[a.asname or a.name] = node.module
    return out


def _command_imports(fn: ast.FunctionDef, helpers: dict[str, ast.FunctionDef]) -> set[str]:
    """Internal modules a command uses: imported in its body or in the pose/cli.py helpers it calls,
    or bound by a module-level import of pose/cli.py and used there."""
    top = _module_level_names()
    seen_fns, todo, mods = set(), [fn], set()
    while todo:
        f = todo.pop()
        if f.name in seen_fns:
            continue
        seen_fns.add(f.name)
        v = _Imports(DISPATCHER)
        v.visit(f)
        mods |= {t for t, _ in v.edges}
        for node in ast.walk(f):
            if isinstance(node, ast.Name) and node.id in helpers and node.id != f.name:
                todo.append(helpers[node.id])
            if isinstance(node, ast.Name) and node.id in top:
                mods.add(top[node.id])
    return mods


def _closure(start: set[str], leaves: frozenset[str] = frozenset()) -> set[str]:
    """``start`` and every module they import, transitively (not past the ``leaves``)."""
    out, todo = set(), list(start)
    while todo:
        m = todo.pop()
        if m in out:
            continue
        out.add(m)
        if m in leaves:
            continue
        todo += GRAPH[m]
        parts = m.split(".")                  # importing a.b.c runs a/__init__ and a/b/__init__ first
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
    return out


def _stage_commands(cmd) -> list[str]:
    text = " ".join(cmd) if isinstance(cmd, list) else str(cmd)
    return re.findall(r"(?:^|[\s;&|(])pose\s+([a-z][a-z-]*)", text)


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_stage_deps_cover_the_modules_its_command_imports(stage):
    body = _stages()[stage]
    commands = _stage_commands(body["cmd"])
    assert commands, f"stage {stage}: no `pose <command>` in its cmd"
    tree = ast.parse(MODULES[DISPATCHER].read_text())
    helpers = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    cli = _cli_commands()
    start = set()
    for c in commands:
        assert c in cli, f"stage {stage}: `pose {c}` is not a command of pose/cli.py"
        start |= _command_imports(cli[c], helpers)
    deps = [str(d) for d in body.get("deps", []) if "${" not in str(d)]
    checked = PARAMS_OK in deps and stage != "check_params"
    covered = {PARAMS_MODULE} if checked else set()
    missing = []
    for m in sorted(_closure(start, frozenset(covered)) - {DISPATCHER} - covered):
        f = MODULES[m].relative_to(REPO).as_posix()
        if m in ("pose",):                   # the package marker (telemetry switches), no stage code
            continue
        if not any(f == d.rstrip("/") or f.startswith(d.rstrip("/") + "/") for d in deps):
            missing.append(f)
    assert not missing, (f"dvc.yaml stage {stage} ({', '.join('pose ' + c for c in commands)}) imports modules "
                         f"its deps do not cover (add the file or its package folder):\n" + "\n".join(missing))


def _stage_closure(stage: str) -> tuple[list[str], set[str]]:
    """``(code deps, files)`` of a stage: its pose/... deps and the files of the modules its command imports."""
    body = _stages()[stage]
    tree = ast.parse(MODULES[DISPATCHER].read_text())
    helpers = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    cli = _cli_commands()
    start = set()
    for c in _stage_commands(body["cmd"]):
        start |= _command_imports(cli[c], helpers)
    deps = [str(d).rstrip("/") for d in body.get("deps", []) if str(d).startswith(PACKAGES)]
    checked = PARAMS_OK in [str(d) for d in body.get("deps", [])] and stage != "check_params"
    closure = _closure(start, frozenset({PARAMS_MODULE} if checked else set()))
    return deps, {MODULES[m].relative_to(REPO).as_posix() for m in closure}


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_stage_deps_list_no_code_its_command_does_not_import(stage):
    """A code dep (a file, or a folder: every .py under it) is code the stage's command imports, so an edit
    of unrelated code (a command no stage runs, another stage's module) reruns nothing (issue 22)."""
    deps, files = _stage_closure(stage)
    extra = []
    for d in deps:
        path = REPO / d
        listed = [path] if path.is_file() else sorted(path.rglob("*.py"))
        extra += [f.relative_to(REPO).as_posix() for f in listed if f.relative_to(REPO).as_posix() not in files]
    assert not extra, (f"dvc.yaml stage {stage} lists code its command does not import (list the files it imports "
                       f"instead of their folder, or drop the dep):\n" + "\n".join(extra))


def test_the_committed_dvc_lock_records_the_code_and_params_of_this_tree():
    """`dvc status` finds no stage whose code or params differ from what dvc.lock recorded, so a fresh clone's
    `dvc repro` reruns nothing for code reasons (data outputs are absent on a clone: not checked here).
    Refresh it with `make run` (dvc repro) and commit dvc.lock with the code (README, "Contributing")."""
    import json
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "DVC_NO_ANALYTICS": "1"}, timeout=120)
    assert out.returncode == 0, out.stderr
    stale = []
    for stage, entries in json.loads(out.stdout or "{}").items():
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            for dep, state in (entry.get("changed deps") or {}).items():
                if dep.startswith(PACKAGES) or dep == "params.yaml":
                    stale.append(f"{stage}: {dep} {state}")
    assert not stale, ("dvc.lock does not record this tree's code / params (run `make run` and commit dvc.lock "
                       "with the code):\n" + "\n".join(stale))
