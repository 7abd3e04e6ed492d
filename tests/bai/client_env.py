"""A cached Python 3.13 virtual environment with the official ``backend.ai-client`` (docs/backendai-compat.md).

The client 26.9.6 needs Python >=3.13,<3.14, so it cannot live in the project's 3.11 venv. The venv is built once
per machine under ``~/.cache/moorage/bai-client-<version>/`` (override: ``MOORAGE_BAI_CLIENT_CACHE``): built into a
temporary sibling directory, checked, then renamed into place, so a half-built venv is never reused. A cached venv
is reused when ``backend.ai --version`` runs and names the expected version.

Console-script shebangs hold the absolute path of the (temporary) build directory, so the CLI is always run as
``<venv>/bin/python -m ai.backend.cli``, which keeps working after the rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BAI_CLIENT_VERSION = "26.9.6"
INSTALL_TIMEOUT = 900.0


def cache_dir() -> Path:
    base = os.environ.get("MOORAGE_BAI_CLIENT_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "moorage"
    return root / f"bai-client-{BAI_CLIENT_VERSION}"


def find_python313() -> str | None:
    """A Python 3.13 interpreter: $MOORAGE_PYTHON313, then pyenv, then PATH."""
    candidates: list[str] = []
    if os.environ.get("MOORAGE_PYTHON313"):
        candidates.append(os.environ["MOORAGE_PYTHON313"])
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        prefix = subprocess.run(["pyenv", "prefix", "3.13"], capture_output=True, text=True, timeout=30,
                                check=False).stdout.strip().splitlines()
        candidates += [str(Path(p) / "bin" / "python3.13") for p in prefix if p]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv_root.is_dir():
        candidates += [str(p / "bin" / "python3.13") for p in sorted(pyenv_root.glob("3.13*"), reverse=True)]
    if found := shutil.which("python3.13"):
        candidates.append(found)
    for cand in candidates:
        if Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def cli_command(venv: Path) -> list[str]:
    return [str(venv / "bin" / "python"), "-m", "ai.backend.cli"]


def _works(venv: Path) -> bool:
    if not (venv / "bin" / "python").exists():
        return False
    try:
        result = subprocess.run([*cli_command(venv), "--version"], capture_output=True, text=True, timeout=120,
                                check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0 and BAI_CLIENT_VERSION in (result.stdout + result.stderr)


def ensure_client_venv(log: object = sys.stderr) -> Path:
    """The path of a working client venv, building it (about 2 minutes) when the cache has none.

    Raises RuntimeError with pip's output tail when the build fails (for example with no network access)."""
    target = cache_dir()
    if _works(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per machine; the others wait, then reuse
        if _works(target):
            return target
        python = find_python313()
        if python is None:
            raise RuntimeError("no Python 3.13 interpreter found (pyenv install 3.13, or set MOORAGE_PYTHON313)")
        build = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=target.parent))
        try:
            subprocess.run([python, "-m", "venv", str(build)], check=True, capture_output=True, timeout=300)
            pip = [str(build / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
            result = subprocess.run([*pip, f"backend.ai-client=={BAI_CLIENT_VERSION}"], capture_output=True,
                                    text=True, timeout=INSTALL_TIMEOUT, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"pip install backend.ai-client=={BAI_CLIENT_VERSION} failed:\n"
                                   f"{(result.stdout + result.stderr)[-3000:]}")
            if target.exists():  # a stale, broken cache: move it aside, then delete it
                stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
                os.rename(target, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.rename(build, target)
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
        if not _works(target):
            raise RuntimeError(f"the client venv at {target} was built but `backend.ai --version` fails")
        return target


if __name__ == "__main__":
    print(ensure_client_venv())
