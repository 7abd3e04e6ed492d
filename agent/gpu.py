"""GPU discovery through NVML (``nvidia-ml-py``, imported as ``pynvml``), or fake devices from the config.

``discover_gpus(section)`` returns the devices this agent may hand out, in NVML index order:

* ``[gpu] fake_devices`` set → exactly those (tests and demos on hosts without GPUs; nothing is checked).
* else NVML: count, UUID, name and total memory per device. When the NVML library is missing or finds no
  driver, the agent has no GPU slots, and ONE log line says why (not an error: CPU hosts are normal).
* ``[gpu] exclude`` removes devices by UUID; ``[gpu] enabled = false`` reports none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from agent.config import GpuSection
from common.slots import parse_binary_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuDevice:
    index: int
    uuid: str
    name: str
    memory: int  # bytes
    fake: bool = False


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def nvml_devices(nvml: Any = None) -> list[GpuDevice]:
    """Enumerate with NVML; raises whatever NVML raises (the caller logs it)."""
    if nvml is None:
        import pynvml  # nvidia-ml-py

        nvml = pynvml
    nvml.nvmlInit()
    try:
        devices = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle).total
            devices.append(GpuDevice(index=index, uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                                     name=_text(nvml.nvmlDeviceGetName(handle)), memory=int(memory)))
        return devices
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # shutdown failures do not change what was found
            pass


def discover_gpus(section: GpuSection, nvml: Any = None) -> list[GpuDevice]:
    if not section.enabled:
        log.info("GPU discovery disabled ([gpu] enabled = false); no GPU slots")
        return []
    if section.fake_devices is not None:
        devices = [GpuDevice(index=i, uuid=d.uuid, name=d.name, memory=int(parse_binary_size(d.memory)), fake=True)
                   for i, d in enumerate(section.fake_devices)]
        log.warning("using %d FAKE GPU device(s) from [gpu] fake_devices (for tests; nothing runs on them)",
                    len(devices))
    else:
        try:
            devices = nvml_devices(nvml)
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
            log.info("no GPU slots: NVML is not usable on this host (%s: %s)", type(exc).__name__, exc)
            return []
        if not devices:
            log.info("no GPU slots: NVML found no GPU")
    excluded = set(section.exclude)
    kept = [d for d in devices if d.uuid not in excluded]
    for d in kept:
        log.info("GPU %d: %s (%s, %.1f GiB)%s", d.index, d.uuid, d.name, d.memory / 2**30, " [fake]" if d.fake else "")
    return kept
