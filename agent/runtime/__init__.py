"""Kernel runtimes: how replicas are run (see :mod:`agent.runtime.base`)."""

from __future__ import annotations

from agent.config import AgentConfig
from agent.runtime.base import KernelHandle, KernelRuntime, ReplicaPlan, RuntimeUnavailable


def make_runtime(config: AgentConfig) -> KernelRuntime:
    """The runtime named by ``[agent] runtime``: ``local`` or ``docker``."""
    if config.agent.runtime == "local":
        from agent.runtime.local import LocalRuntime

        return LocalRuntime(config)
    if config.agent.runtime == "docker":
        from agent.runtime.docker import DockerRuntime

        return DockerRuntime(config)
    raise ValueError(f"unknown runtime {config.agent.runtime!r}")


__all__ = ["KernelHandle", "KernelRuntime", "ReplicaPlan", "RuntimeUnavailable", "make_runtime"]
