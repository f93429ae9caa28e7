"""Architecture rules from the map, as tests: privacy is pure; datasite ⟂ orchestrator; layers."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_contracts_would_catch_a_violation(tmp_path):
    """The linter really inspects our code: a planted Django import in privacy breaks it."""
    import shutil

    for pkg in ("privacy", "common", "audit", "datasite", "orchestrator", "compliance", "webapp"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "privacy" / "planted.py").write_text("import django  # noqa\n")
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "privacy.planted -> django" in result.stdout


PACKAGES = ("privacy", "common", "audit", "compliance", "datasite", "orchestrator", "webapp")
MAX_MODULE_LINES = 420  # "no module above about 400 lines"


def _production_modules() -> list[Path]:
    return [
        path
        for pkg in PACKAGES
        for path in sorted((REPO / pkg).rglob("*.py"))
        if "migrations" not in path.parts
    ]


def _import_cycles(graph) -> list[list[str]]:
    """Strongly connected groups of more than one module in ``graph`` (Tarjan, iterative)."""
    adjacency = {m: sorted(graph.find_modules_directly_imported_by(m) & graph.modules) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in sorted(adjacency):
        if root in index:
            continue
        work = [(root, iter(adjacency[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        cycles.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(adjacency[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return cycles


def test_no_two_modules_import_each_other():
    """Counting function-local imports too: an import inside a function hides no cycle."""
    import grimp

    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert _import_cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    class Graph:
        modules = {"a", "b", "c", "d"}
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

        def find_modules_directly_imported_by(self, module):
            return self.edges[module]

    assert _import_cycles(Graph()) == [["a", "b", "c"]]


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined_private_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name | ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.id if isinstance(node, ast.Name) else node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if _private(n)}


def private_reaches(sources: dict[str, str]) -> list[str]:
    """``from ours import _x``, and ``obj._x`` on anything but self/cls where ``_x`` is defined
    in another of ``sources`` (module name → code) and not in the module using it."""
    trees = {name: ast.parse(code) for name, code in sources.items()}
    defined = {name: _defined_private_names(tree) for name, tree in trees.items()}
    anywhere = set().union(*defined.values())
    found = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                found += [f"{name}:{node.lineno} imports {node.module}.{a.name}" for a in node.names
                          if _private(a.name)]
            elif (
                isinstance(node, ast.Attribute)
                and _private(node.attr)
                and node.attr in anywhere - defined[name]
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                found.append(f"{name}:{node.lineno} uses .{node.attr} of another module")
    return found


def test_no_module_reaches_into_another_modules_private_names():
    sources = {str(p.relative_to(REPO)): p.read_text() for p in _production_modules()}
    assert private_reaches(sources) == []


def test_private_reach_finder_finds_both_kinds():
    sources = {
        "orchestrator/engine.py": "def _fail(study): ...\n",
        "orchestrator/modes/he.py": "from orchestrator import engine\nengine._fail(1)\n",
        "privacy/robust.py": "from privacy.strategies import _float64\n",
        "orchestrator/sites.py": (
            "class SiteClient:\n    def _call(self): ...\n    def ok(self):\n        self._call()\n"
        ),
        "orchestrator/modes/secagg.py": "def step(client):\n    client._call()\n",
    }
    assert private_reaches(sources) == [
        "orchestrator/modes/he.py:2 uses ._fail of another module",
        "privacy/robust.py:1 imports privacy.strategies._float64",
        "orchestrator/modes/secagg.py:2 uses ._call of another module",
    ]


def test_no_module_is_long():
    long = {
        str(p.relative_to(REPO)): n
        for p in _production_modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_a_node_starts_without_importing_torch():
    """Every manage.py command and web worker sets Django up: torch (~5 s to import) must wait
    until a round trains or ε is composed, or nodes boot slowly enough to miss health checks."""
    code = (
        "import os, sys; os.environ['DJANGO_SETTINGS_MODULE'] = 'webapp.settings'; import django; "
        "django.setup(); import webapp.urls_datasite, webapp.urls_orchestrator; "
        "print(sorted(m for m in ('torch', 'lerobot', 'opacus') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr
