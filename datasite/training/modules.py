"""Custom training code: a researcher's Python module and its documented entry point.

A study's code is either a recipe (a name and a config) or a **module bundle**
(``CodeBundle(kind="module")`` in :mod:`common.protocol`)::

    {"kind": "module",
     "source": "<Python source text, at most 200 kB>",
     "entry": "build_policy",          # the function to call (default)
     "base_recipe": "act-small",       # whose policy, processors and normalization to start from
     "base_config": {"dim_model": 64}, # that recipe's config (validated like a recipe's)
     "config": {...}}                  # free JSON handed to the entry point

The site builds ``base_recipe`` with ``base_config`` for the dataset schema and the federation's
normalization statistics, exactly as a recipe study would (policy seeded by ``init_seed``,
lerobot pre/post-processors holding the statistics), then calls the **entry point**::

    def build_policy(bundle: PolicyBundle, config: dict) -> PolicyBundle:
        ...

- ``bundle`` is the built :class:`datasite.training.recipes.PolicyBundle`: ``policy`` (a lerobot
  policy, train mode, on the training device), ``preprocessor``/``postprocessor``, ``recipe``,
  ``config`` (the resolved base config), ``loss_fn(policy, batch)`` (mean per-frame loss over a
  preprocessed batch) and ``vmap_loss`` (the ``torch.func`` version, or ``None``).
- ``config`` is a deep copy of the bundle's ``config`` field.
- It returns a ``PolicyBundle`` (the same one modified, or ``dataclasses.replace(bundle, ...)``).
  It may freeze parameters (``requires_grad_(False)``: only trainable tensors are trained and
  exchanged), replace a head, or change ``loss_fn``. The policy must keep its lerobot
  ``config`` (the trainer reads the delta timestamps from it), keep the processors, keep at
  least one trainable parameter, and a loss must stay a mean of per-frame losses (per-unit DP
  clipping relies on it). A module that changes ``loss_fn`` without giving its own
  ``vmap_loss`` trains with the per-unit loop under DP.
- It runs seeded (the base ``init_seed``), so new layers get the same initial weights at
  every site. It must not touch data, files or the network: it only shapes the model.

Example (freeze everything but ACT's action head)::

    def build_policy(bundle, config):
        for name, p in bundle.policy.named_parameters():
            p.requires_grad_(name.startswith("model.action_head."))
        return bundle

**Safety.** A data owner approves the exact source (its SHA-256 is pinned with the bundle),
and the site re-verifies that hash before the code is ever executed
(:func:`datasite.studies.verified_code`, before the initial weights and every round), as in
PySyft: *the approval is the control*. The code runs in-process with the worker's rights.
:func:`check_source`, run when a code request arrives, refuses a module that imports
:data:`DENIED_MODULES` or :data:`PROTECTED_MODULES`, uses :data:`DENIED_NAMES`, or assigns to
an attribute of an imported module (monkeypatching), and reports the line.
:data:`PROTECTED_MODULES` are fedsilo's own packages and the libraries its DP rests on: a
module that imported them could patch the clipping, the noise, its randomness or the ledger
and switch DP off while the site still charges the approved σ. ``torch`` (layers) and
``torch.func`` (a module's own ``vmap_loss`` uses ``functional_call``) stay allowed. It is a
**review aid, not a sandbox**: Python offers many ways around any such list (``torch.load``,
``numpy.load`` on pickles, introspection), so read the code before approving it. A site that
wants containment runs its Celery training workers in a container without network access and
with read-only access to its datasets.

:func:`load_entry` compiles the source and executes it into a fresh module object (never
imported from a path and never registered in ``sys.modules``). This module does not import
torch.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import linecache
import traceback
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = [
    "DENIED_ATTRIBUTES",
    "DENIED_MODULES",
    "DENIED_NAMES",
    "PROTECTED_MODULES",
    "Finding",
    "ModuleCodeError",
    "call_entry",
    "check_source",
    "load_entry",
    "validate_source",
]

DENIED_MODULES = frozenset(
    {"os", "subprocess", "socket", "shutil", "sys", "ctypes", "importlib", "builtins", "pickle",
     "requests", "httpx", "urllib"}
)  # fmt: skip
_FEDSILO = "fedsilo's own code: a module could patch the DP it is charged for, the ledger or these checks"
_RANDOMNESS = "the DP key and noise are derived with it: patching it would make the noise predictable"
PROTECTED_MODULES: Mapping[str, str] = MappingProxyType(
    dict.fromkeys(
        ("privacy", "datasite", "orchestrator", "common", "audit", "compliance", "webapp"), _FEDSILO
    )
    | {
        "opacus": "a DP library: patching it could switch DP off",
        "cryptography": _RANDOMNESS,
        "numpy": _RANDOMNESS,
        "hmac": _RANDOMNESS,
        "hashlib": _RANDOMNESS,
        "secrets": _RANDOMNESS,
    }
)
"""Top-level packages a module may not import, each with the reason."""
DENIED_NAMES = frozenset({"eval", "exec", "open", "__import__", "__builtins__"})
DENIED_ATTRIBUTES = frozenset(
    {"__import__", "__builtins__", "__globals__", "__subclasses__", "__code__", "__loader__"}
)


@dataclass(frozen=True)
class Finding:
    """One reason a module is refused, at a 1-based source line (None: the whole module)."""

    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{_at(self.line)}{self.message}"


class ModuleCodeError(ValueError):
    """A module bundle that cannot be used; ``line`` is the offending source line (or None)."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


def check_source(source: str, entry: str = "build_policy") -> list[Finding]:
    """Static review aid (not a sandbox): syntax, the entry point, denied imports and names.

    Returns the findings, empty when the module passes."""
    try:
        tree = ast.parse(source, filename="<module bundle>", mode="exec")
    except SyntaxError as exc:
        return [Finding(exc.lineno, f"syntax error: {exc.msg}")]
    except ValueError as exc:  # e.g. null bytes on older Pythons
        return [Finding(None, f"syntax error: {exc}")]
    findings: list[Finding] = []
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    imported = _imported_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                findings.extend(_import_finding(node.lineno, alias.name, f"import of {alias.name!r}"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                findings.append(Finding(node.lineno, "relative imports are not allowed"))
            else:
                what = f"import from {node.module!r}"
                findings.extend(_import_finding(node.lineno, node.module or "", what))
            for alias in node.names:
                if alias.name in DENIED_NAMES:
                    findings.append(Finding(node.lineno, f"importing {alias.name!r} is not allowed"))
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
            for target in _targets(node):
                root = _root_name(target)
                if isinstance(target, ast.Attribute | ast.Subscript) and root in imported:
                    findings.append(
                        Finding(node.lineno, f"assigning to an attribute of imported {root!r} "
                                "(monkeypatching) is not allowed")
                    )  # fmt: skip
        elif isinstance(node, ast.Name) and node.id in DENIED_NAMES:
            what = "call of" if id(node) in called else "use of"
            findings.append(Finding(node.lineno, f"{what} {node.id}() is not allowed"))
        elif isinstance(node, ast.Attribute) and node.attr in DENIED_ATTRIBUTES:
            findings.append(Finding(node.lineno, f"attribute {node.attr!r} is not allowed"))
    findings.extend(_check_entry(tree, entry))
    return sorted(set(findings), key=lambda f: (f.line is None, f.line or 0, f.message))


def validate_source(source: str, entry: str = "build_policy") -> None:
    """Raise :class:`ModuleCodeError` listing every finding of :func:`check_source`."""
    findings = check_source(source, entry)
    if findings:
        raise ModuleCodeError("module refused: " + "; ".join(map(str, findings)), line=findings[0].line)


def load_entry(source: str, entry: str = "build_policy") -> Callable[..., Any]:
    """Compile ``source``, execute it into a fresh module namespace and return ``entry``.

    Call it only with source whose approved SHA-256 the site has just re-verified. The static
    check runs again (defence in depth). Errors are :class:`ModuleCodeError` with the line."""
    validate_source(source, entry)
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    filename = f"<fedsilo-module {digest}>"
    try:
        code = compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:  # pragma: no cover - check_source reports it first
        raise ModuleCodeError(f"line {exc.lineno}: syntax error: {exc.msg}", exc.lineno) from exc
    # tracebacks show the module's lines; mtime None keeps the entry across checkcache()
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    module = types.ModuleType(f"fedsilo_module_{digest}", "a researcher's module bundle")
    try:
        exec(code, module.__dict__)  # noqa: S102 - approved, hash-verified code (see docstring)
    except Exception as exc:
        line = _line_in(exc, filename)
        raise ModuleCodeError(f"{_at(line)}the module raised while loading: {exc!r}", line) from exc
    fn = module.__dict__.get(entry)
    if fn is None:
        raise ModuleCodeError(f"the module defines no entry point {entry!r}")
    if not callable(fn):
        raise ModuleCodeError(f"entry point {entry!r} is not callable (it is a {type(fn).__name__})")
    try:
        inspect.signature(fn).bind(None, {})
    except TypeError as exc:
        raise ModuleCodeError(
            f"entry point {entry!r} must accept (bundle, config): {exc}", _def_line(fn)
        ) from exc
    except ValueError:  # no signature available (builtins): let the call decide
        pass
    return fn


def call_entry(fn: Callable[..., Any], bundle: Any, config: Mapping[str, Any]) -> Any:
    """Call an entry point; its exceptions become :class:`ModuleCodeError` with the line."""
    import copy

    try:
        return fn(bundle, copy.deepcopy(dict(config)))
    except Exception as exc:
        filename = getattr(getattr(fn, "__code__", None), "co_filename", "")
        line = _line_in(exc, filename)
        raise ModuleCodeError(f"{_at(line)}the entry point raised: {exc!r}", line) from exc


# --------------------------------------------------------------------------- helpers
def _import_finding(line: int, module: str, what: str) -> list[Finding]:
    top = module.split(".")[0]
    if top in DENIED_MODULES:
        return [Finding(line, f"{what} is not allowed")]
    if top in PROTECTED_MODULES:
        return [Finding(line, f"{what} is not allowed ({PROTECTED_MODULES[top]})")]
    return []


def _imported_names(tree: ast.Module) -> set[str]:
    """Names that imports bind anywhere in the module (``import a.b`` binds ``a``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                names.add(alias.asname or alias.name.split(".")[0])
    return names


def _targets(node: ast.stmt) -> Iterator[ast.expr]:
    """Every expression a statement assigns to or deletes (tuple targets unpacked)."""
    todo = list(node.targets) if isinstance(node, ast.Assign | ast.Delete) else [node.target]
    while todo:
        target = todo.pop()
        if isinstance(target, ast.Tuple | ast.List | ast.Starred):
            todo.extend(target.elts if not isinstance(target, ast.Starred) else [target.value])
        else:
            yield target


def _root_name(node: ast.expr) -> str | None:
    """``a`` for ``a.b[0].c``; None when the chain does not start at a plain name."""
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _check_entry(tree: ast.Module, entry: str) -> list[Finding]:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == entry:
            return []
        if isinstance(node, ast.AsyncFunctionDef) and node.name == entry:
            return [Finding(node.lineno, f"entry point {entry!r} must be a plain function, not async")]
        targets = (
            node.targets if isinstance(node, ast.Assign)
            else [node.target] if isinstance(node, ast.AnnAssign) and node.value is not None
            else []
        )  # fmt: skip
        if any(isinstance(t, ast.Name) and t.id == entry for t in targets):
            return []
    return [Finding(None, f"the module defines no top-level entry point {entry!r}")]


def _line_in(exc: BaseException, filename: str) -> int | None:
    """The innermost line of ``filename`` in the exception's traceback."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == filename:
            line = frame.lineno
    if line is None and isinstance(exc, SyntaxError) and exc.filename == filename:
        line = exc.lineno
    return line


def _def_line(fn: Any) -> int | None:
    return getattr(getattr(fn, "__code__", None), "co_firstlineno", None)


def _at(line: int | None) -> str:
    return f"line {line}: " if line else ""
