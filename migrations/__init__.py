"""Alembic migrations for the manager database (one linear history; PostgreSQL and SQLite)."""
