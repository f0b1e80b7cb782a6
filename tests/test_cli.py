import subprocess
import sys

from xlmkit.cli import COMMANDS, main


def test_top_level_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in ("prepare", "pretrain", "info"):
        assert name in out


def test_unknown_command_fails(capsys):
    import pytest

    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_every_command_module_has_the_interface():
    import importlib

    for name, (module_name, _help) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:
                continue  # not built yet
            raise
        assert hasattr(module, "run"), module_name
        assert hasattr(module, "add_arguments") or hasattr(module, "add_arguments_for"), module_name


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "xlmkit", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip()
