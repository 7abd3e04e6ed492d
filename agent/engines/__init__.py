"""Thin launchers that run inference engines inside a replica (e.g. with the Prometheus metrics they lack)."""
