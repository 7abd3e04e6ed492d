"""The standalone launcher: interpolation, pre-start actions and its exit protocol (no sandbox needed)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.runtime import launcher
from agent.runtime.launcher import ActionError, Result, build_argv, interpolate, run_actions

VARS = {"port": 30001, "ports": [30001], "model_path": "/models", "runtime_path": "/usr/bin/python3"}


@pytest.mark.parametrize(("text", "expected"), [
    ("serve --port {port}", "serve --port 30001"),
    ("{model_path}/weights.gguf", "/models/weights.gguf"),
    ("{ports[0]} {port:06d}", "30001 030001"),
    # literal braces that are not known placeholders survive (JSON in vLLM-style args)
    ('--override \'{"rope_scaling": {"type": "yarn", "factor": 4}}\'',
     '--override \'{"rope_scaling": {"type": "yarn", "factor": 4}}\''),
    ('--json {"port": {port}, "x": {}}', '--json {"port": 30001, "x": {}}'),
    ("{unknown} and {also.unknown} and ${HOME} and ${{ expr }}",
     "{unknown} and {also.unknown} and ${HOME} and ${{ expr }}"),
    ("a}}b{{c {{", "a}}b{{c {{"),
    ("{{port}} is escaped", "{port} is escaped"),
    ("", ""),
])
def test_interpolation(text: str, expected: str) -> None:
    assert interpolate(text, VARS) == expected


def test_interpolation_of_ref_results() -> None:
    variables = {**VARS, "cmd": Result(out="hello\n", err=""), "tmp": "/tmp/x.py"}
    assert interpolate("{cmd.out}|{cmd[out]}|{tmp}", variables) == "hello\n|hello\n|/tmp/x.py"


def test_interpolation_error_on_a_known_name_is_reported() -> None:
    with pytest.raises(ActionError, match="ports"):
        interpolate("{ports[3]}", VARS)


def test_actions_in_order_with_refs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    variables = dict(VARS, work=str(tmp_path))
    actions = [
        {"action": "mkdir", "args": {"path": "{work}/a/b"}},
        {"action": "write_file", "args": {"filename": "{work}/a/b/conf.json",
                                          "body": ['{"port": {port}}', "model={model_path}"]}},
        {"action": "write_file", "args": {"filename": "{work}/a/b/conf.json", "body": ["more"], "append": True,
                                          "mode": "600"}},
        {"action": "write_tempfile", "args": {"body": ["print('hi from {port}')"]}, "ref": "script"},
        {"action": "run_command", "args": {"command": ["{runtime_path}", "{script}"]}, "ref": "out"},
        {"action": "run_command", "args": {"command": ["sh", "-c", "echo {out.out}"], "echo": True}},
        {"action": "log", "args": {"message": "ready on {port}"}},
        {"action": "log", "args": {"message": "hidden", "debug": True}},
    ]
    variables["runtime_path"] = sys.executable
    run_actions(actions, variables)
    conf = tmp_path / "a" / "b" / "conf.json"
    assert conf.read_text() == '{"port": 30001}\nmodel=/models\nmore\n'
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    assert variables["script"].endswith(".py") and Path(variables["script"]).read_text() == "print('hi from 30001')\n"
    assert variables["out"] == {"out": "hi from 30001\n", "err": ""}
    printed = capsys.readouterr().out
    assert "hi from 30001" in printed and "ready on 30001" in printed and "hidden" not in printed
    os.remove(variables["script"])


@pytest.mark.parametrize(("action", "message"), [
    ({"action": "download_model", "args": {}}, "unknown action 'download_model'"),
    ({"action": ["run_command"], "args": {}}, "unknown action ['run_command']"),  # not a TypeError
    ({"action": "run_command", "args": {"command": ["sh", "-c", "echo nope >&2; exit 4"]}}, "exited with code 4: nope"),
    ({"action": "run_command", "args": {"command": ["/nonexistent/binary"]}}, "cannot run"),
    ({"action": "write_file", "args": {"body": ["x"]}}, "invalid arguments"),
    ({"action": "write_file", "args": {"filename": "/nonexistent-dir/x", "body": ["x"]}}, "No such file"),
    ({"action": "write_file", "args": {"filename": "{work}/x", "body": ["x"], "mode": "rwx"}}, "invalid file mode"),
])
def test_failing_actions(tmp_path: Path, action: dict, message: str) -> None:
    with pytest.raises(ActionError, match="pre_start_actions\\[1\\]") as info:
        run_actions([{"action": "log", "args": {"message": "first"}}, action], dict(VARS, work=str(tmp_path)))
    assert message in str(info.value)


def test_argv_with_and_without_shell() -> None:
    assert build_argv("serve {port} --x '{\"a\": 1}'", "/bin/bash", VARS) == [
        "/bin/bash", "-c", "serve 30001 --x '{\"a\": 1}'"]
    assert build_argv("serve --port {port} --json '{\"a\": 1}'", None, VARS) == [
        "serve", "--port", "30001", "--json", '{"a": 1}']


def test_launcher_is_standalone() -> None:
    """It runs inside containers with the image's python3: standard library imports only."""
    tree = ast.parse(Path(launcher.__file__).read_text())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module}
    assert modules <= set(sys.stdlib_module_names) | {"__future__"}


def _run_launcher(tmp_path: Path, spec: dict) -> subprocess.CompletedProcess[str]:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    return subprocess.run([sys.executable, launcher.__file__, str(spec_path)], capture_output=True, text=True,
                          timeout=30, cwd=tmp_path)


def test_launcher_execs_the_command_in_model_path(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    proc = _run_launcher(tmp_path, {
        "port": 1234, "model_path": str(models), "work_dir": str(tmp_path), "shell": "/bin/sh",
        "pre_start_actions": [{"action": "write_file", "args": {"filename": "{work_dir}/f", "body": ["{port}"]}}],
        "start_command": "echo port={port} cwd=$(pwd) file=$(cat {work_dir}/f) '{\"k\": 1}'",
    })
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f'port=1234 cwd={models} file=1234 {{"k": 1}}'


def test_launcher_prestart_failure_writes_error_file(tmp_path: Path) -> None:
    proc = _run_launcher(tmp_path, {"port": 1, "model_path": "/nonexistent", "work_dir": str(tmp_path),
                                    "pre_start_actions": [{"action": "frobnicate", "args": {}}],
                                    "start_command": "true"})
    assert proc.returncode == launcher.EXIT_PRESTART_FAILED
    error = json.loads((tmp_path / launcher.PRESTART_ERROR_FILE).read_text())
    assert error["type"] == "prestart_failed" and "unknown action 'frobnicate'" in error["message"]


def test_launcher_start_failure(tmp_path: Path) -> None:
    proc = _run_launcher(tmp_path, {"port": 1, "model_path": "", "work_dir": str(tmp_path), "shell": None,
                                    "start_command": "/nonexistent/server --port {port}"})
    assert proc.returncode == launcher.EXIT_START_FAILED
    error = json.loads((tmp_path / launcher.START_ERROR_FILE).read_text())
    assert error["type"] == "start_failed" and "/nonexistent/server" in error["message"]
