"""Control-plane benchmark (issue #6): ``.venv/bin/python -m bench.control_plane``; see ``run.py``."""
