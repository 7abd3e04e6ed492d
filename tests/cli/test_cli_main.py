"""Unit tests of the ``moorage`` parser and its plug-in registration (no server needed)."""

from __future__ import annotations

import argparse
import sys
import types

import pytest

from manager.cli import main as cli_main
from manager.cli.main import COMMAND_MODULES, OPTIONAL_COMMAND_MODULES, build_parser, main


def test_help_and_usage_exit_codes(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "folder" in out and "service" in out
    assert main([]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["service"]) == 2
    assert main(["folder", "upload", "only-a-name"]) == 2


def test_command_modules_list():
    assert "manager.cli.folder" in COMMAND_MODULES and "manager.cli.service" in COMMAND_MODULES
    assert {"manager.cli.up", "manager.cli.daemons"} <= set(COMMAND_MODULES)
    assert OPTIONAL_COMMAND_MODULES == {"manager.cli.up", "manager.cli.daemons"}


def test_a_new_module_plugs_in_with_register(monkeypatch, capsys):
    module = types.ModuleType("manager.cli.fakeplugin")

    def run(args: argparse.Namespace) -> int:
        print(f"hello {args.who}")
        return 7

    def register(subparsers) -> None:
        parser = subparsers.add_parser("hello", help="say hello")
        parser.add_argument("who")
        parser.set_defaults(func=run)

    module.register = register
    monkeypatch.setitem(sys.modules, "manager.cli.fakeplugin", module)
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", [*COMMAND_MODULES, "manager.cli.fakeplugin"])
    assert main(["hello", "world"]) == 7
    assert capsys.readouterr().out == "hello world\n"


def test_optional_modules_absent_are_skipped_but_broken_ones_raise(monkeypatch):
    real_import = cli_main.importlib.import_module

    def fake_import(name: str):
        if name == "manager.cli.up":
            raise ModuleNotFoundError("No module named 'some_dependency'", name="some_dependency")
        if name == "manager.cli.daemons":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name)

    monkeypatch.setattr(cli_main.importlib, "import_module", fake_import)
    with pytest.raises(ModuleNotFoundError, match="some_dependency"):
        build_parser()


def test_connection_options_before_and_after_the_command():
    parser = build_parser()
    args = parser.parse_args(["--endpoint", "http://a:1", "service", "list"])
    assert args.endpoint == "http://a:1"
    args = parser.parse_args(["service", "list", "--endpoint", "http://b:2", "--data-dir", "/tmp/x"])
    assert args.endpoint == "http://b:2" and args.data_dir == "/tmp/x"
    args = parser.parse_args(["service", "list"])
    assert args.endpoint is None and args.access_key is None
