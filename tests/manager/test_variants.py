"""Runtime variants: the synthesised definitions and command lines, including hostile environment values."""

from __future__ import annotations

import shlex
from decimal import Decimal

import pytest

from common.definitions import ModelDefinition
from manager.variants import VARIANTS, VariantError, pick_gguf, preset_args, synthesize_definition


def _command(variant: str, environ: dict | None = None, shares: str | None = None,
             files: list[str] | None = None) -> tuple[list[str], dict]:
    raw = synthesize_definition(variant, mount="/models", environ=environ or {},
                                shares=Decimal(shares) if shares else None,
                                folder_files=files or ["model.gguf"], service_name="svc")
    definition = ModelDefinition.model_validate(raw)
    service = definition.serving_model().service
    assert service is not None and service.shell is None
    return (shlex.split(service.start_command) if service.start_command else []), raw


@pytest.mark.parametrize("variant, expected", [
    ("vllm", ["vllm", "serve", "{model_path}", "--host", "0.0.0.0", "--port", "{port}"]),
    ("sglang", ["python3", "-m", "sglang.launch_server", "--model-path", "{model_path}", "--host", "0.0.0.0",
                "--port", "{port}"]),
    ("huggingface-tgi", ["text-generation-launcher", "--model-id", "{model_path}", "--hostname", "0.0.0.0",
                         "--port", "{port}"]),
    ("modular-max", ["max", "serve", "--model-path", "{model_path}", "--port", "{port}"]),
    ("llamacpp", ["python3", "-m", "agent.engines.llamacpp_server", "--host", "127.0.0.1", "--port", "{port}",
                  "--interrupt_requests", "False", "--model", "{model_path}/model.gguf", "--model_alias", "svc"]),
    ("nim", []),
    ("cmd", []),
])
def test_base_command_lines(variant: str, expected: list[str]) -> None:
    argv, raw = _command(variant)
    assert argv == expected
    model = raw["models"][0]
    assert model["name"] == VARIANTS[variant].model_name and model["model_path"] == "/models"
    check = model["service"].get("health_check")
    assert (check or {}).get("path") == VARIANTS[variant].health_path
    if check:
        assert check["initial_delay"] >= 600 and check["interval"] == 10.0


def test_presets_become_flags() -> None:
    argv, _ = _command("vllm", {"VLLM_TP_SIZE": "2", "VLLM_QUANTIZATION": "awq",
                                "VLLM_EXTRA_ARGS": "--enable-prefix-caching --max-num-seqs 8"}, shares="0.5")
    assert argv[7:] == ["--tensor-parallel-size", "2", "--quantization", "awq", "--gpu-memory-utilization", "0.45",
                        "--enable-prefix-caching", "--max-num-seqs", "8"]
    argv, _ = _command("sglang", {"SGLANG_TP_SIZE": "4", "SGLANG_EXTRA_ARGS": "--enable-torch-compile"},
                       shares="0.25")
    assert argv[-5:] == ["--tp-size", "4", "--mem-fraction-static", "0.22", "--enable-torch-compile"]
    argv, _ = _command("vllm", shares="1")  # a whole GPU: the engine's own default
    assert "--gpu-memory-utilization" not in argv


@pytest.mark.parametrize("hostile", [
    "awq; rm -rf /", "$(reboot)", "`id`", "a' b \"c", "x && curl evil", "{model_path}; echo", "|| true",
])
def test_hostile_values_stay_single_arguments(hostile: str) -> None:
    argv, raw = _command("vllm", {"VLLM_QUANTIZATION": hostile})
    assert argv[argv.index("--quantization") + 1] == hostile
    assert raw["models"][0]["service"]["shell"] is None  # executed without a shell at all


def test_hostile_extra_args_are_split_not_executed() -> None:
    argv, _ = _command("vllm", {"VLLM_EXTRA_ARGS": "--a '$(id)' ; rm -rf /"})
    assert argv[-6:] == ["--a", "$(id)", ";", "rm", "-rf", "/"]
    with pytest.raises(VariantError, match="VLLM_EXTRA_ARGS"):
        _command("vllm", {"VLLM_EXTRA_ARGS": "--a 'unclosed"})
    with pytest.raises(VariantError, match="VLLM_QUANTIZATION"):
        _command("vllm", {"VLLM_QUANTIZATION": "a\nb"})
    with pytest.raises(VariantError, match="VLLM_EXTRA_ARGS"):
        _command("vllm", {"VLLM_EXTRA_ARGS": " ".join(["-x"] * 100)})


def test_gguf_choice() -> None:
    assert pick_gguf(["a.txt", "m.GGUF"], {}) == "m.GGUF"
    assert pick_gguf(["a.gguf", "b.gguf"], {"LLAMACPP_MODEL_FILE": "b.gguf"}) == "b.gguf"
    with pytest.raises(VariantError, match="LLAMACPP_MODEL_FILE"):
        pick_gguf(["a.gguf", "b.gguf"], {})
    with pytest.raises(VariantError, match="no .gguf"):
        pick_gguf(["README.md"], {})
    with pytest.raises(VariantError, match="LLAMACPP_MODEL_FILE"):
        pick_gguf(["a.gguf"], {"LLAMACPP_MODEL_FILE": "../../etc/passwd"})
    argv, _ = _command("llamacpp", {"LLAMACPP_N_CTX": "4096", "LLAMACPP_MODEL_ALIAS": "chat"},
                       files=["sub/model one.gguf"])
    assert argv[argv.index("--model") + 1] == "{model_path}/sub/model one.gguf"
    assert argv[argv.index("--model_alias") + 1] == "chat" and argv[-2:] == ["--n_ctx", "4096"]


def test_preset_args_without_values() -> None:
    assert preset_args(VARIANTS["huggingface-tgi"], {}, None) == []
