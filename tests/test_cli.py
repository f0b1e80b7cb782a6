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
