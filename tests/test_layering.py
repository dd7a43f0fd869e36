"""What each part of edgeclip may import, checked on the source's syntax trees (DESIGN.md: the runtime never imports
the PyTorch side; `import edgeclip` and the runtime never import torch or onnx).

Two kinds of rule, one table:

- `at_import`: modules that must not be loaded when the module is imported. Module-level imports count (inside a
  module-level `if` or `try` too, but not under `if TYPE_CHECKING:`), and so do edgeclip modules imported that way,
  transitively, with the packages above them: `edgeclip.runtime` importing a module that imports torch at module
  level imports torch. Imports inside functions run later, when a command or backend needs them: allowed.
- `never`: modules that must not be imported at all, also not inside functions (the PyTorch side for the runtime).

An import check through `sys.modules` in a child process sees one path through the code; this sees every import
statement, and names the file and line.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "edgeclip"
HEAVY = ("torch", "onnx", "onnxscript", "transformers", "tensorrt")
PYTORCH_SIDE = ("edgeclip.models", "edgeclip.checkpoint", "edgeclip.convert", "edgeclip.export", "edgeclip.train")


@dataclass(frozen=True)
class Rule:
    modules: tuple[str, ...]  # the rule covers these modules and everything under them
    at_import: tuple[str, ...]  # not loaded by importing the module
    never: tuple[str, ...]  # not imported anywhere in the module, functions included
    except_for: tuple[str, ...] = ()  # modules under `modules` that the rule does not cover
    only_itself: bool = False  # the named modules only, not the modules under them
    why: str = ""


# Only the torch backend's own pieces import torch at module level, and only that backend loads them (inside
# its functions, when a runner starts).
TORCH_PIECES = ("edgeclip.runtime.torch_graph", "edgeclip.runtime.gpu_preprocess")
SHARED = ("edgeclip.bundle", "edgeclip.contract", "edgeclip.preprocess", "edgeclip.images", "edgeclip.tokenizer",
          "edgeclip.fileio", "edgeclip.device", "edgeclip.errors", "edgeclip.schema", "edgeclip.graphfile")  # fmt: skip
RULES: tuple[Rule, ...] = (
    Rule(("edgeclip",), HEAVY, PYTORCH_SIDE, only_itself=True, why="`import edgeclip` stays light"),
    Rule(
        ("edgeclip.runtime", "edgeclip.stream", "edgeclip.search", "edgeclip.scale", "edgeclip.zeroshot"),
        HEAVY,
        PYTORCH_SIDE,
        except_for=TORCH_PIECES,
        why="the runtime and the apps on it",
    ),
    Rule(
        TORCH_PIECES,
        ("tensorrt",),
        PYTORCH_SIDE,
        why="the torch backend runs the bundle's graphs, not edgeclip's models",
    ),
    Rule(
        (
            "edgeclip.bundle",
            "edgeclip.contract",
            "edgeclip.preprocess",
            "edgeclip.images",
            "edgeclip.tokenizer",
            "edgeclip.fileio",
            "edgeclip.device",
            "edgeclip.errors",
            "edgeclip.schema",
            "edgeclip.graphfile",
        ),
        HEAVY,
        PYTORCH_SIDE,
        why="shared by export and runtime",
    ),
    Rule(("edgeclip.models", "edgeclip.models.config"), ("torch",), (), only_itself=True, why="configs need no torch"),
)


@dataclass(frozen=True)
class Import:
    target: str
    line: int
    at_import: bool


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@functools.cache
def _imports(name: str) -> tuple[Import, ...]:
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, at_import: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, at_import)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            at_import = False  # runs when called (decorators and defaults aside: none of them import)
        if isinstance(node, ast.Import):
            found.extend(Import(a.name, node.lineno, at_import) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.append(Import(base, node.lineno, at_import))
            for alias in node.names:  # `from edgeclip.runtime import torch_graph` loads a submodule
                if f"{base}.{alias.name}" in MODULES:
                    found.append(Import(f"{base}.{alias.name}", node.lineno, at_import))
        for child in ast.iter_child_nodes(node):
            visit(child, at_import)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), True)
    return tuple(found)


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _loaded_by_import(name: str) -> dict[str, str]:
    """Every module importing `name` loads, each with the chain that loads it ("a -> b -> torch")."""
    chains: dict[str, str] = {name: name}
    todo = [name]
    while todo:
        current = todo.pop()
        for imp in _imports(current):
            if not imp.at_import:
                continue
            for target in _parents(imp.target):
                if target not in chains:
                    chains[target] = f"{chains[current]} -> {target} (line {imp.line})"
                    if target in MODULES:
                        todo.append(target)
    return chains


def _covered(rule: Rule) -> list[str]:
    def under(module: str, prefixes: tuple[str, ...]) -> bool:
        return any(module == p or module.startswith(p + ".") for p in prefixes)

    if rule.only_itself:
        return sorted(m for m in MODULES if m in rule.modules)
    return sorted(m for m in MODULES if under(m, rule.modules) and not under(m, rule.except_for))


def _starts(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("rule", RULES, ids=[r.modules[0] for r in RULES])
def test_each_part_imports_only_what_it_may(rule: Rule) -> None:
    covered = _covered(rule)
    assert covered, f"the rule for {rule.modules} covers no module: the table is out of date"
    problems = []
    for module in covered:
        for target, chain in _loaded_by_import(module).items():
            if _starts(target, rule.at_import):
                problems.append(f"importing {module} loads {target}: {chain}")
        for imp in _imports(module):
            if _starts(imp.target, rule.never):
                problems.append(f"{MODULES[module].relative_to(ROOT.parent)}:{imp.line} imports {imp.target}")
    assert not problems, f"{rule.why}:\n" + "\n".join(sorted(set(problems)))


def test_the_checker_sees_imports_at_every_depth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker itself, on a made-up package: module level, under try/if, in functions, TYPE_CHECKING, chains."""
    pkg = tmp_path / "edgeclip"
    (pkg / "runtime").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from edgeclip.runtime import a\n")
    (pkg / "runtime" / "__init__.py").write_text("")
    (pkg / "runtime" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import onnx\ntry:\n    from . import b\n"
        "except ImportError:\n    pass\ndef f():\n    import torch\n    from edgeclip.export import x\n"
    )
    (pkg / "runtime" / "b.py").write_text("import torch.nn\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "ROOT", pkg)
    modules = {_module_name(p): p for p in pkg.rglob("*.py")}
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "MODULES", modules)
    _imports.cache_clear()
    loaded = _loaded_by_import("edgeclip")
    assert "torch" in loaded and "edgeclip.runtime.b (line 5) -> torch" in loaded["torch"]
    assert "onnx" not in loaded  # under TYPE_CHECKING only
    late = {i.target for i in _imports("edgeclip.runtime.a") if not i.at_import}
    _imports.cache_clear()
    assert late == {"torch", "edgeclip.export"}
