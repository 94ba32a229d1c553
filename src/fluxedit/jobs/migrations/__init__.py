"""Alembic migrations for the job database (PostgreSQL; SQLite uses create_all)."""
