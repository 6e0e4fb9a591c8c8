"""Alembic environment: runs against the connection the store hands over, or MANIFEST_DB_URL."""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

from imageml_core.manifest.schema import metadata

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = os.environ.get("MANIFEST_DB_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("MANIFEST_DB_URL is not set: which manifest store should be migrated?")
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
