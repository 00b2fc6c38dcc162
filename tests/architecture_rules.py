"""The import boundaries of architecture.md, read from source with ``ast`` (test code, not product code).

Every way a module can load another counts: ``import x``, ``from x import y``, relative imports (resolved to
absolute names), and ``importlib.import_module(...)`` / ``import_module(...)`` / ``__import__(...)`` whose
argument is a constant string, a name bound to one at module level, or a loop/comprehension variable over a
constant tuple/list/set of strings (``for module in ("a.b", "c"): import_module(module)``). An argument that
cannot be resolved is itself a finding in a protected package: an unreadable import could reach anything.

Rules:

- ``recsys_rl`` (every module but ``recsys_rl.cli``) never imports ``ranker``; ``recsys_rl.cli`` may, but only
  with an import statement (a reader sees the dependency), never through ``import_module``.
- ``logging_schema`` imports nothing of ours but itself and the generated stubs (``recsys_rl.logging.v1``,
  ``recsys_rl.ranking.v1``).
- ``evaluators`` never imports ``ranker``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("recsys_rl", "ranker", "logging_schema", "evaluators")
STUBS = ("recsys_rl.logging.v1", "recsys_rl.ranking.v1", "recsys_rl.catalog.v1")
COMPOSITION_ROOT = "recsys_rl.cli"
# Packages whose rules an unresolvable dynamic import could break unseen.
PROTECTED = ("recsys_rl", "logging_schema", "evaluators")

_IMPORT_FUNCTIONS = frozenset({"import_module", "__import__"})


@dataclass(frozen=True)
class ImportRef:
    """One module reference: ``target`` is absolute (for ``from a import b``: ``a.b``, which may be a name in
    ``a`` rather than a module; the rules compare prefixes, so either reading gives the same verdict).
    ``target`` is None when the reference could not be resolved (``why`` says what it was)."""

    line: int
    target: str | None
    dynamic: bool
    why: str = ""


@dataclass(frozen=True)
class Violation:
    path: Path
    line: int
    module: str
    rule: str  # a key of _RULES
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.module}: {self.message}"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _is_generated(path: Path) -> bool:
    return path.parent.name == "v1" and path.stem.endswith(("_pb2", "_pb2_grpc"))


def python_files(root: Path, packages: tuple[str, ...] = PACKAGES) -> Iterator[Path]:
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if not _is_generated(path):
                yield path


def _resolve_relative(package: str, level: int, module: str | None) -> str | None:
    """``from <level dots><module> import ...`` inside ``package``; None when it climbs above the top level."""
    parts = package.split(".") if package else []
    if level - 1 >= len(parts):
        return None
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([module] if module else []))


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, tree: ast.Module) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.refs: list[ImportRef] = []
        self._scopes: list[dict[str, list[str]]] = [self._module_constants(tree)]
        # Names bound to importlib's import functions, e.g. `from importlib import import_module as load`.
        self._import_functions = set(_IMPORT_FUNCTIONS)

    @staticmethod
    def _strings(node: ast.AST) -> list[str] | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            values = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            return values if len(values) == len(node.elts) else None
        return None

    def _module_constants(self, tree: ast.Module) -> dict[str, list[str]]:
        """Module-level ``NAME = "a.b"`` / ``NAME = ("a", "b")``, assigned exactly once."""
        assigned: dict[str, int] = {}
        values: dict[str, list[str]] = {}
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.For)) else [])
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        assigned[name.id] = assigned.get(name.id, 0) + 1
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                strings = self._strings(node.value)
                for target in targets:
                    if isinstance(target, ast.Name) and strings is not None and assigned.get(target.id) == 1:
                        values[target.id] = strings
        return values

    def _lookup(self, name: str) -> list[str] | None:
        for scope in reversed(self._scopes):
            if name in scope:
                return scope[name]
        return None

    def _values(self, node: ast.AST) -> list[str] | None:
        strings = self._strings(node)
        if strings is not None:
            return strings
        if isinstance(node, ast.Name):
            return self._lookup(node.id)
        return None

    def _loop_binding(self, target: ast.AST, iterable: ast.AST) -> dict[str, list[str]]:
        if isinstance(target, ast.Name):
            values = self._values(iterable)
            if values is not None and not isinstance(iterable, ast.Constant):
                return {target.id: values}
            return {target.id: None}  # type: ignore[dict-item]  # shadows an outer binding: unknown here
        return {}

    # --- statements ------------------------------------------------------------------------------

    def visit_Import(self, node: ast.Import) -> None:  # noqa: N802
        for alias in node.names:
            self.refs.append(ImportRef(node.lineno, alias.name, dynamic=False))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:  # noqa: N802
        base = node.module if node.level == 0 else _resolve_relative(self.package, node.level, node.module)
        if base is None:
            dots = "." * node.level + (node.module or "")
            self.refs.append(ImportRef(node.lineno, None, dynamic=False,
                                       why=f"relative import {dots!r} climbs above the top-level package"))
            return
        for alias in node.names:
            self.refs.append(ImportRef(node.lineno, base if alias.name == "*" else f"{base}.{alias.name}",
                                       dynamic=False))
            if base in ("importlib", "builtins") and alias.name in _IMPORT_FUNCTIONS:
                self._import_functions.add(alias.asname or alias.name)

    def visit_For(self, node: ast.For) -> None:  # noqa: N802
        self.visit(node.iter)
        self._scopes.append(self._loop_binding(node.target, node.iter))
        for child in node.body + node.orelse:
            self.visit(child)
        self._scopes.pop()

    def _visit_comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> None:
        pushed = 0
        for generator in node.generators:
            self.visit(generator.iter)
            self._scopes.append(self._loop_binding(generator.target, generator.iter))
            pushed += 1
            for condition in generator.ifs:
                self.visit(condition)
        for part in ("elt", "key", "value"):
            if hasattr(node, part):
                self.visit(getattr(node, part))
        del self._scopes[len(self._scopes) - pushed:]

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _visit_comprehension  # noqa: N815

    def visit_Call(self, node: ast.Call) -> None:  # noqa: N802
        func = node.func
        # `importlib.import_module(...)`, `il.import_module(...)` (any alias of importlib), `builtins.__import__`;
        # bare names only when bound to those functions (`from importlib import import_module as load`).
        if isinstance(func, ast.Attribute) and func.attr in _IMPORT_FUNCTIONS:
            self._record_dynamic(node, func.attr)
        elif isinstance(func, ast.Name) and func.id in self._import_functions:
            self._record_dynamic(node, func.id)
        self.generic_visit(node)

    def _record_dynamic(self, node: ast.Call, name: str) -> None:
        argument = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
        values = self._values(argument) if argument is not None else None
        if values is None:
            shown = ast.unparse(argument) if argument is not None else "(no argument)"
            self.refs.append(ImportRef(node.lineno, None, dynamic=True,
                                       why=f"{name}({shown}) cannot be resolved to a module name"))
            return
        package_arg = node.args[1] if len(node.args) > 1 else next(
            (k.value for k in node.keywords if k.arg == "package"), None)
        for value in values:
            if not value.startswith("."):
                self.refs.append(ImportRef(node.lineno, value, dynamic=True))
                continue
            package = self._package_of(package_arg)
            level = len(value) - len(value.lstrip("."))
            target = _resolve_relative(package, level, value.lstrip(".") or None) if package is not None else None
            self.refs.append(ImportRef(node.lineno, target, dynamic=True,
                                       why="" if target else f"{name}({value!r}) cannot be resolved"))

    def _package_of(self, node: ast.AST | None) -> str | None:
        if isinstance(node, ast.Name) and node.id == "__package__":
            return self.package
        if isinstance(node, ast.Name) and node.id == "__name__":
            return self.module
        values = self._values(node) if node is not None else None
        return values[0] if values and len(values) == 1 else None


def collect_imports(path: Path, module: str) -> list[ImportRef]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    collector = _Collector(module, path.name == "__init__.py", tree)
    collector.visit(tree)
    return collector.refs


def _ours(target: str) -> bool:
    return any(_within(target, package) for package in PACKAGES)


_RULES = {
    "core": "the core never imports the gRPC layer (ranker)",
    "root": "the composition root imports ranker with an import statement, not by name",
    "log": "logging_schema imports nothing of ours but the generated stubs",
    "eval": "evaluators never import the gRPC layer (ranker)",
    "unresolved": "an import in a protected package must be readable",
}


def broken_rules(module: str, ref: ImportRef) -> list[str]:
    """Keys of ``_RULES`` that ``ref`` in ``module`` breaks (empty when none)."""
    package = module.split(".")[0]
    if ref.target is None:
        return ["unresolved"] if package in PROTECTED else []
    broken: list[str] = []
    if package == "recsys_rl" and _within(ref.target, "ranker"):
        if module != COMPOSITION_ROOT:
            broken.append("core")
        elif ref.dynamic:
            broken.append("root")
    if package == "logging_schema" and _ours(ref.target) and not _within(ref.target, "logging_schema") \
            and not any(_within(ref.target, stub) for stub in STUBS):
        broken.append("log")
    if package == "evaluators" and _within(ref.target, "ranker"):
        broken.append("eval")
    return broken


def check_tree(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[Violation]:
    """Every boundary violation under ``root`` (the repository, or a fake tree laid out like it): one per
    (file, line, rule), naming what was imported and how."""
    violations: list[Violation] = []
    for path in python_files(root, packages):
        module = module_name(root, path)
        found: dict[tuple[int, str], list[str]] = {}
        for ref in collect_imports(path, module):
            what = ref.why if ref.target is None else \
                f"{'import_module' if ref.dynamic else 'import'} {ref.target}"
            for rule in broken_rules(module, ref):
                found.setdefault((ref.line, rule), []).append(what)
        for (line, rule), whats in sorted(found.items()):
            violations.append(Violation(path.relative_to(root), line, module, rule, f"{'; '.join(whats)}: {_RULES[rule]}"))
    return violations
