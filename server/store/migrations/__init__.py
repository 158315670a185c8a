"""Alembic migrations, run by ``settle migrate`` (and ``settle run``)."""
