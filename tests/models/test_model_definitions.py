"""The model folders in ``configs/models/`` hold valid ``model-definition.yaml`` files (checked with the same
parser the control plane uses) and the contracts other parts rely on."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from common.definitions import parse_model_definition

MODELS = Path(__file__).resolve().parents[2] / "configs" / "models"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load(name: str):
    return parse_model_definition((MODELS / name / "model-definition.yaml").read_text(), source=name)


def test_echo_definition():
    definition = load("echo")
    model = definition.serving_model()
    assert model.name == "echo" and model.model_path == "/models"
    service = model.service
    assert service.port == 8000
    assert service.start_command == "python3 /models/echo_server.py --port {port}"
    assert service.argv(service.start_command.format(port=8123)) == [
        "python3", "/models/echo_server.py", "--port", "8123"]
    check = definition.health_check()
    assert check is not None
    assert (check.path, check.interval, check.max_retries, check.max_wait_time, check.initial_delay) == (
        "/health", 1, 3, 2, 20)
    assert (MODELS / "echo" / "echo_server.py").is_file()
    assert "test fixture" in (MODELS / "echo" / "README.md").read_text().lower()


def test_smollm2_definition():
    definition = load("smollm2")
    model = definition.serving_model()
    assert model.name == "smollm2" and model.model_path == "/models"
    argv = model.service.argv(model.service.start_command.format(port=9000))
    assert argv[:3] == ["python3", "-m", "agent.engines.llamacpp_server"]
    flags = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert flags == {
        "--model": f"/models/{GGUF_NAME}", "--host": "127.0.0.1", "--port": "9000", "--n_ctx": "2048",
        "--chat_format": "chatml", "--model_alias": "smollm2", "--interrupt_requests": "False",
    }
    check = definition.health_check()
    assert (check.path, check.interval, check.max_retries, check.max_wait_time, check.initial_delay) == (
        "/v1/models", 2, 5, 5, 120)


@pytest.mark.parametrize("name", ["echo", "smollm2"])
def test_no_weights_committed(name):
    assert not list((MODELS / name).rglob("*.gguf"))
    assert (MODELS / name / "README.md").is_file()


def test_smollm2_flags_exist_in_llama_cpp_server():
    """When llama-cpp-python[server] is installed here, its CLI really has the flags the definition uses."""
    result = subprocess.run([sys.executable, "-m", "agent.engines.llamacpp_server", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for flag in ("--model", "--model_alias", "--host", "--port", "--n_ctx", "--chat_format", "--interrupt_requests"):
        assert flag in result.stdout
    command = load("smollm2").serving_model().service.start_command
    assert all(flag in shlex.split(command) for flag in ("--model_alias", "--chat_format"))
