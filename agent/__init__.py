"""Moorage agent: one daemon per host that runs model-serving replicas and reports them to the manager.

Entry points: :func:`agent.server.build_agent_app` (also embedded by ``moorage up``) and ``python -m agent``.
"""

__version__ = "0.1.0"
