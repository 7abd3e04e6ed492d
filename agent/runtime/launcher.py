"""Replica launcher: pre-start actions, then ``exec`` of the start command (docs/architecture.md, Replica isolation).

STANDALONE: standard library only, no imports from Moorage packages. It runs inside the replica's sandbox
(and later inside Docker images with the image's ``python3``)::

    python3 launcher.py SPEC_JSON_PATH

The spec is a JSON object: ``pre_start_actions`` (list of ``{action, args, ref?}``), ``start_command``
(str), ``shell`` (str or null), ``model_path``, ``port``, ``work_dir``, ``variables`` (extra template
variables, e.g. ``runtime_path``, ``ports``) and optionally ``stdout_path``/``stderr_path``: files the
launcher appends its own and the replica's output to (the docker runtime uses them, so that logs live in
the kernel's directory on the host, survive the container and an agent restart, and are bounded the same
way as the local runtime's).

Interpolation: every string argument (also inside lists and mappings) is interpolated with the variables
``{port}``, ``{model_path}``, ``{runtime_path}``, ``{ports}``, ``{work_dir}`` plus the ``ref`` results of
earlier actions, with ``str.format`` syntax (``{ref.out}``, ``{ref[out]}``, ``{ports[0]}``, ``{port:d}``).
Unlike plain ``str.format_map``, a ``{...}`` that is not a known placeholder is left untouched, so JSON in
commands survives; ``{{name}}`` around a known name yields a literal ``{name}``.

Failures: an unknown or failing action writes ``prestart-error.json`` next to the spec
(``{"type": "prestart_failed", "message": ...}``) and exits with :data:`EXIT_PRESTART_FAILED`; an unusable
start command writes ``start-error.json`` (``{"type": "start_failed", ...}``) and exits with
:data:`EXIT_START_FAILED`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any, Dict, NoReturn  # noqa: UP035 - Dict: see Result

EXIT_PRESTART_FAILED = 86
EXIT_START_FAILED = 87
PRESTART_ERROR_FILE = "prestart-error.json"
START_ERROR_FILE = "start-error.json"
OUTPUT_TAIL = 2000  # characters of a failing command's output quoted in the error

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PLACEHOLDER = rf"{_NAME}(?:\.{_NAME}|\[[^\[\]{{}}]+\])*(?:![rsa])?(?::[^{{}}]*)?"
_TOKEN_RE = re.compile(rf"\{{\{{(?P<escaped>{_PLACEHOLDER})\}}\}}|\{{(?P<field>{_PLACEHOLDER})\}}")
_ROOT_RE = re.compile(_NAME)


class ActionError(Exception):
    """A pre-start action failed; the message is shown to the user on the route."""


class Result(Dict[str, Any]):  # noqa: UP006 - an image's python3 may predate dict[...] as a base class (3.9)
    """A dict result (``run_command``) usable both as ``{ref.out}`` and ``{ref[out]}``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def interpolate(text: str, variables: dict[str, Any]) -> str:
    """Replace known ``{placeholders}``; leave every other brace untouched."""

    def replace(match: re.Match[str]) -> str:
        expr = match.group("escaped")
        root_match = _ROOT_RE.match(expr or match.group("field"))
        assert root_match is not None  # both alternatives of _PLACEHOLDER start with a name
        root = root_match.group(0)
        if root not in variables:
            return match.group(0)
        if expr is not None:
            return "{" + expr + "}"
        try:
            return ("{" + match.group("field") + "}").format_map(variables)
        except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
            raise ActionError(f"cannot interpolate {match.group(0)!r}: {type(exc).__name__}: {exc}") from None

    return _TOKEN_RE.sub(replace, text)


def interpolate_value(value: Any, variables: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return interpolate(value, variables)
    if isinstance(value, list):
        return [interpolate_value(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: interpolate_value(v, variables) for k, v in value.items()}
    return value


def _mode(mode: object) -> int:
    try:
        return int(str(mode), 8)
    except ValueError:
        raise ActionError(f"invalid file mode {mode!r}; use an octal string like '644'") from None


def _lines(body: object) -> list[str]:
    if isinstance(body, str):
        return [body]
    if not isinstance(body, list):
        raise ActionError("'body' must be a list of lines")
    return [str(line) for line in body]


def action_write_file(filename: str, body: object, mode: object = "644", append: bool = False) -> str:
    with open(filename, "a" if append else "w") as fp:
        for line in _lines(body):
            fp.write(line + "\n")
    os.chmod(filename, _mode(mode))
    return filename


def action_write_tempfile(body: object, mode: object = "644") -> str:
    fd, path = tempfile.mkstemp(suffix=".py")
    with os.fdopen(fd, "w") as fp:
        for line in _lines(body):
            fp.write(line + "\n")
    os.chmod(path, _mode(mode))
    return path


def action_run_command(command: str | list[object], echo: bool = False) -> Result:
    argv = shlex.split(command) if isinstance(command, str) else [str(part) for part in command]
    if not argv:
        raise ActionError("'command' is empty")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace")
    except OSError as exc:
        raise ActionError(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from None
    if echo:
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
    if proc.returncode != 0:
        raise ActionError(
            f"command {shlex.join(argv)!r} exited with code {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip()[-OUTPUT_TAIL:]}"
        )
    return Result(out=proc.stdout, err=proc.stderr)


def action_mkdir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


def action_log(message: object, debug: bool = False) -> None:
    if debug and not os.environ.get("MOORAGE_PRESTART_DEBUG"):
        return
    print(f"[pre-start]{' (debug)' if debug else ''} {message}", flush=True)


ACTIONS: dict[str, Callable[..., object]] = {
    "write_file": action_write_file,
    "write_tempfile": action_write_tempfile,
    "run_command": action_run_command,
    "mkdir": action_mkdir,
    "log": action_log,
}


def run_actions(actions: list[Any], variables: dict[str, Any]) -> None:
    """Run the pre-start actions in order; ``ref`` results become variables. Raises ActionError."""
    for index, item in enumerate(actions):
        name = item.get("action") if isinstance(item, dict) else None
        where = f"pre_start_actions[{index}] ({name})"
        func = ACTIONS.get(name) if isinstance(name, str) else None  # JSON may hold an unhashable "action"
        if func is None:
            raise ActionError(f"pre_start_actions[{index}]: unknown action {name!r} "
                              f"(known: {', '.join(sorted(ACTIONS))})")
        args = item.get("args") or {}
        if not isinstance(args, dict):
            raise ActionError(f"{where}: 'args' must be a mapping")
        try:
            args = interpolate_value(args, variables)
            result = func(**args)
        except ActionError as exc:
            raise ActionError(f"{where}: {exc}") from None
        except TypeError as exc:
            raise ActionError(f"{where}: invalid arguments: {exc}") from None
        except OSError as exc:
            raise ActionError(f"{where}: {exc}") from None
        ref = item.get("ref")
        if ref:
            variables[ref] = Result(result) if isinstance(result, dict) else result


def build_argv(start_command: str, shell: str | None, variables: dict[str, Any]) -> list[str]:
    command = interpolate(start_command, variables)
    if shell:
        return [shell, "-c", command]
    return shlex.split(command)


def _fail(spec_path: str, filename: str, kind: str, message: str, code: int) -> NoReturn:
    error = {"type": kind, "message": message}
    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(spec_path)), filename), "w") as fp:
            json.dump(error, fp)
    except OSError:
        pass
    print(f"[launcher] {kind}: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def redirect_output(stdout_path: str | None, stderr_path: str | None) -> None:
    """Point fds 1 and 2 (inherited by the start command) at append-only files."""
    for path, fd, stream in ((stdout_path, 1, sys.stdout), (stderr_path, 2, sys.stderr)):
        if not path:
            continue
        stream.flush()
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(target, fd)
        os.close(target)


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        print("usage: launcher.py SPEC_JSON_PATH", file=sys.stderr)
        sys.exit(2)
    spec_path = argv[1]
    with open(spec_path) as fp:
        spec = json.load(fp)
    redirect_output(spec.get("stdout_path"), spec.get("stderr_path"))
    port = int(spec["port"])
    model_path = spec.get("model_path") or ""
    work_dir = spec.get("work_dir") or os.getcwd()
    variables = {"port": port, "ports": [port], "model_path": model_path, "work_dir": work_dir,
                 "runtime_path": sys.executable}
    variables.update(spec.get("variables") or {})
    try:
        run_actions(spec.get("pre_start_actions") or [], variables)
    except ActionError as exc:
        _fail(spec_path, PRESTART_ERROR_FILE, "prestart_failed", str(exc), EXIT_PRESTART_FAILED)
    start_command = spec.get("start_command")
    if not start_command:
        _fail(spec_path, START_ERROR_FILE, "start_failed",
              "the model definition has no start_command and there is no image command to fall back to "
              "(the local runtime has none; with docker, the image defines no ENTRYPOINT/CMD)", EXIT_START_FAILED)
    try:
        args = build_argv(start_command, spec.get("shell"), variables)
    except (ActionError, ValueError) as exc:
        _fail(spec_path, START_ERROR_FILE, "start_failed", f"start_command: {exc}", EXIT_START_FAILED)
    if not args:
        _fail(spec_path, START_ERROR_FILE, "start_failed", "start_command is empty", EXIT_START_FAILED)
    for cwd in (model_path, work_dir):
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)
            break
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(args[0], args)
    except OSError as exc:
        _fail(spec_path, START_ERROR_FILE, "start_failed", f"cannot execute {args[0]!r}: {exc.strerror or exc}",
              EXIT_START_FAILED)


if __name__ == "__main__":
    main(sys.argv)
