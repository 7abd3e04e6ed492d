"""Runtime variants (docs/architecture.md, Model folders and definitions): when a model folder has no
``model-definition.yaml``, the manager synthesises one for the chosen engine. Pure functions; the manager stores
the result on the endpoint.

* The command is an argv joined with :func:`shlex.quote` and run without a shell (``shell: null``), so values
  from the environment (``VLLM_EXTRA_ARGS``, ``VLLM_QUANTIZATION``, …) become arguments, never shell code.
* ``{port}`` and ``{model_path}`` are filled in by the agent's launcher (the replica's own port; the mount).
* A fractional GPU (``cuda.shares`` < 1) becomes the engine's memory fraction where it has one (vLLM
  ``--gpu-memory-utilization``, SGLang ``--mem-fraction-static``): ``shares × 0.9`` so the engine keeps the
  same 10 % headroom it keeps on a whole GPU, inside the MPS memory limit the agent sets.
* ``llamacpp`` runs llama-cpp-python's server through :mod:`agent.engines.llamacpp_server`, which takes the same
  flags and adds the Prometheus ``/metrics`` (``llamacpp:*``) that ``inference_framework`` autoscaling reads; the
  replica's ``python3`` must import Moorage's ``agent`` package (the agent's own venv for the local runtime).
* Health checks use the variant's path with Backend.AI's seeded timing (interval 10 s, 10 retries) and a long
  initial delay for large models (1800 s; 600 s for llama.cpp, whose GGUF models load in seconds to minutes).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

SAFE_ARG = re.compile(r"^[\w@%+=:,./{}-]+$")
GPU_MEMORY_HEADROOM = Decimal("0.9")
MAX_EXTRA_ARGS = 64


class VariantError(ValueError):
    """A variant cannot be synthesised; ``field`` names the request field or environment variable to fix."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    label: str
    model_name: str
    port: int
    health_path: str | None
    command: tuple[str, ...] | None  # None: the image's own command (CMD), which the docker runtime runs
    flag_env: tuple[tuple[str, str], ...] = ()  # (ENV, --flag) presets
    extra_args_env: str | None = None
    memory_fraction_flag: str | None = None
    initial_delay: float = 1800.0


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("vllm", "vLLM", "vllm-model", 8000, "/health",
            ("vllm", "serve", "{model_path}", "--host", "0.0.0.0", "--port", "{port}"),
            (("VLLM_TP_SIZE", "--tensor-parallel-size"), ("VLLM_PP_SIZE", "--pipeline-parallel-size"),
             ("VLLM_QUANTIZATION", "--quantization"), ("VLLM_MAX_MODEL_LEN", "--max-model-len"),
             ("VLLM_DTYPE", "--dtype"), ("VLLM_SERVED_MODEL_NAME", "--served-model-name")),
            "VLLM_EXTRA_ARGS", "--gpu-memory-utilization"),
    Variant("sglang", "SGLang", "sglang-model", 9001, "/health",
            ("python3", "-m", "sglang.launch_server", "--model-path", "{model_path}", "--host", "0.0.0.0",
             "--port", "{port}"),
            (("SGLANG_TP_SIZE", "--tp-size"), ("SGLANG_PP_SIZE", "--pp-size"),
             ("SGLANG_QUANTIZATION", "--quantization"), ("SGLANG_CONTEXT_LENGTH", "--context-length")),
            "SGLANG_EXTRA_ARGS", "--mem-fraction-static"),
    Variant("huggingface-tgi", "Huggingface TGI", "tgi-model", 3000, "/info",
            ("text-generation-launcher", "--model-id", "{model_path}", "--hostname", "0.0.0.0", "--port", "{port}"),
            (("TGI_QUANTIZE", "--quantize"), ("TGI_NUM_SHARD", "--num-shard"),
             ("TGI_MAX_INPUT_LENGTH", "--max-input-length")),
            "TGI_EXTRA_ARGS"),
    Variant("nim", "NVIDIA NIM", "nim-model", 8000, "/v1/health/ready", None),
    Variant("modular-max", "Modular MAX", "max-model", 8000, "/health",
            ("max", "serve", "--model-path", "{model_path}", "--port", "{port}"),
            (), "MAX_EXTRA_ARGS"),
    Variant("cmd", "Predefined Image Command", "image-model", 8000, None, None),
    Variant("llamacpp", "llama.cpp (llama-cpp-python)", "llamacpp-model", 8000, "/v1/models",
            # --interrupt_requests False: else a new request cuts the stream in progress short (llama-cpp-python
            # serves one at a time; the others must wait, not truncate each other)
            ("python3", "-m", "agent.engines.llamacpp_server", "--host", "127.0.0.1", "--port", "{port}",
             "--interrupt_requests", "False"),
            (("LLAMACPP_N_CTX", "--n_ctx"), ("LLAMACPP_CHAT_FORMAT", "--chat_format"),
             ("LLAMACPP_N_GPU_LAYERS", "--n_gpu_layers"), ("LLAMACPP_N_THREADS", "--n_threads")),
            "LLAMACPP_EXTRA_ARGS", initial_delay=600.0),
)}
LABELS = {"custom": "Custom (Default)", **{name: v.label for name, v in VARIANTS.items()}}


def quote_argv(argv: list[str]) -> str:
    """Join for ``shlex.split`` (no shell); ``{placeholder}`` words stay bare for readability."""
    return " ".join(a if SAFE_ARG.match(a) else shlex.quote(a) for a in argv)


def _flag_value(env: str, value: str) -> str:
    if not value or len(value) > 256 or "\n" in value or "\x00" in value:
        raise VariantError(env, "must be a single-line value of at most 256 characters")
    return value


def preset_args(variant: Variant, environ: Mapping[str, str], shares: Decimal | None) -> list[str]:
    """Engine flags from the environment presets and the GPU fraction."""
    args: list[str] = []
    for env, flag in variant.flag_env:
        if environ.get(env):
            args += [flag, _flag_value(env, environ[env])]
    if variant.memory_fraction_flag and shares is not None and 0 < shares < 1:
        fraction = (shares * GPU_MEMORY_HEADROOM).quantize(Decimal("0.01"))
        args += [variant.memory_fraction_flag, format(fraction, "f")]
    if variant.extra_args_env and environ.get(variant.extra_args_env):
        try:
            extra = shlex.split(environ[variant.extra_args_env])
        except ValueError as exc:
            raise VariantError(variant.extra_args_env, f"cannot be split into arguments ({exc})") from None
        if len(extra) > MAX_EXTRA_ARGS:
            raise VariantError(variant.extra_args_env, f"at most {MAX_EXTRA_ARGS} arguments")
        args += extra
    return args


def pick_gguf(files: list[str], environ: Mapping[str, str]) -> str:
    """The GGUF to serve: the only one in the folder, or the one named by ``LLAMACPP_MODEL_FILE``."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
    wanted = environ.get("LLAMACPP_MODEL_FILE")
    if wanted:
        if wanted not in ggufs:
            raise VariantError("LLAMACPP_MODEL_FILE", f"{wanted!r} is not a .gguf file in the model folder")
        return wanted
    if not ggufs:
        raise VariantError("config.model", "the model folder holds no .gguf file for the llamacpp variant")
    if len(ggufs) > 1:
        raise VariantError("LLAMACPP_MODEL_FILE", f"the folder holds {len(ggufs)} .gguf files; name one")
    return ggufs[0]


def synthesize_definition(variant_name: str, *, mount: str, environ: Mapping[str, str],
                          shares: Decimal | None, folder_files: list[str], service_name: str) -> dict[str, Any]:
    """A model definition (as a dict for :class:`common.definitions.ModelDefinition`) for the variant."""
    variant = VARIANTS.get(variant_name)
    if variant is None:
        raise VariantError("runtime_variant", f"{variant_name!r} has no synthesised definition")
    argv: list[str] | None = list(variant.command) if variant.command else None
    if argv is not None:
        if variant.name == "llamacpp":
            argv += ["--model", f"{{model_path}}/{pick_gguf(folder_files, environ)}",
                     "--model_alias", environ.get("LLAMACPP_MODEL_ALIAS") or service_name]
        argv += preset_args(variant, environ, shares)
    service: dict[str, Any] = {
        "start_command": quote_argv(argv) if argv is not None else None,
        "shell": None,
        "port": variant.port,
    }
    if variant.health_path:
        service["health_check"] = {"path": variant.health_path, "interval": 10.0, "max_retries": 10,
                                   "max_wait_time": 15.0, "initial_delay": variant.initial_delay}
    return {"models": [{"name": variant.model_name, "model_path": mount, "service": service}]}
