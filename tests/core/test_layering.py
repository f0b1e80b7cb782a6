"""The package's folders are its layers, and imports run one way:

    core < data < model < train < tasks < interop < report < cli

A module may import from its own layer or a lower one, never from a higher one. Every import is
checked, module-level and inside functions alike (a deferred import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import xlmkit

LAYERS = ("core", "data", "model", "train", "tasks", "interop", "report", "cli")
RANK = {name: i for i, name in enumerate(LAYERS)}
PACKAGE = Path(xlmkit.__file__).resolve().parent


def layer_of_module(dotted: str) -> str | None:
    """The layer of an xlmkit module path ("xlmkit.data.text" -> "data"); None outside the layers
    (xlmkit itself, xlmkit.__main__, other packages)."""
    parts = dotted.split(".")
    if parts[0] != "xlmkit" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in RANK else None


def module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(tree: ast.AST, this_module: str, is_package: bool) -> list[tuple[int, str, str]]:
    """(line, the module imported, the import as written) for every import in the tree."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((node.lineno, alias.name, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            names = ", ".join(a.name for a in node.names)
            if node.level:  # relative: resolve against this module's package
                base = this_module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                written = f"from {'.' * node.level}{node.module or ''} import {names}"
            else:
                target = node.module or ""
                written = f"from {target} import {names}"
            if target == "xlmkit":  # `from xlmkit import train`: each name is a module
                for alias in node.names:
                    out.append((node.lineno, f"xlmkit.{alias.name}", written))
            else:
                out.append((node.lineno, target, written))
    return out


def layering_violations(root: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        this = module_name(path, root)
        own = layer_of_module(this)
        if own is None:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, target, written in imported_modules(tree, this, path.name == "__init__.py"):
            other = layer_of_module(target)
            if other is not None and RANK[other] > RANK[own]:
                rel = path.relative_to(root.parent)
                problems.append(f"{rel}:{line}: {own} imports from the higher layer {other}: {written}")
    return problems


def test_every_module_belongs_to_a_layer():
    strays = [str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
              if p.parent != PACKAGE and layer_of_module(module_name(p)) is None]
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert not strays
    assert folders == sorted(LAYERS)


def test_imports_run_one_way():
    problems = layering_violations()
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


def test_the_check_sees_function_level_and_plain_imports(tmp_path):
    pkg = tmp_path / "xlmkit"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "bad.py").write_text(
        "import os\n"
        "from xlmkit.core import errors\n"
        "def f():\n"
        "    from xlmkit.model.encoder import XLMModel\n"
        "    import xlmkit.cli.main\n"
        "    from ..train import pretrain\n"
        "    from xlmkit import tasks\n")
    problems = layering_violations(pkg)
    assert problems == [
        "xlmkit/core/bad.py:4: core imports from the higher layer model: from xlmkit.model.encoder import XLMModel",
        "xlmkit/core/bad.py:5: core imports from the higher layer cli: import xlmkit.cli.main",
        "xlmkit/core/bad.py:6: core imports from the higher layer train: from ..train import pretrain",
        "xlmkit/core/bad.py:7: core imports from the higher layer tasks: from xlmkit import tasks",
    ]
