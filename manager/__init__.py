"""Moorage manager: REST API, scheduler and reconcilers; also home of the ``moorage`` CLI and embedded mode."""

__version__ = "0.1.0"
