import subprocess
import sys

import pytest

from xlmkit.cli.main import COMMANDS, main


def test_top_level_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in ("prepare", "pretrain", "info"):
        assert name in out


def test_unknown_command_fails(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_the_interface_and_help(name, capsys):
    import importlib

    module = importlib.import_module(COMMANDS[name][0])
    assert hasattr(module, "run")
    assert hasattr(module, "add_arguments") or hasattr(module, "add_arguments_for")
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert f"usage: xlmkit {name}" in capsys.readouterr().out


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "xlmkit", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip()


def _imported_modules(tree) -> set[str]:
    """Every module an `import` or `from ... import` names anywhere in the tree (inside functions too)."""
    import ast

    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_argparse_lives_only_in_the_cli():
    import ast
    from pathlib import Path

    import xlmkit

    root = Path(xlmkit.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert len(files) > 40 and root / "cli" / "main.py" in files
    offenders = []
    for f in files:
        if f.relative_to(root).parts[0] == "cli":
            continue
        modules = _imported_modules(ast.parse(f.read_text(encoding="utf-8"), filename=str(f)))
        if any(m == "argparse" or m.startswith("argparse.") for m in modules):
            offenders.append(str(f.relative_to(root.parent)))
    assert offenders == [], f"argparse imported outside xlmkit/cli: {offenders}"


def test_the_import_finder_sees_imports_inside_functions():
    import ast

    tree = ast.parse("def f():\n    import argparse as a\n\ndef g():\n    from argparse import Namespace\n")
    assert _imported_modules(tree) == {"argparse"}


def test_cli_pooling_choices_are_the_libraries():
    from xlmkit.cli.options import POOLINGS
    from xlmkit.tasks.finetune import POOLINGS as LIBRARY_POOLINGS

    assert POOLINGS == LIBRARY_POOLINGS


def test_info_never_imports_torch(tmp_path):
    """`xlmkit info` answers at once: its command module and the library it calls load no torch."""
    script = ("import sys\n"
              "from xlmkit.cli.main import main\n"
              f"rc = main(['info', {str(tmp_path / 'missing')!r}])\n"
              "assert rc == 2, rc\n"
              "assert 'torch' not in sys.modules, 'torch imported'\n"
              "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok" and "no such directory" in out.stderr
