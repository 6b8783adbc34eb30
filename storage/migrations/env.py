"""Alembic environment: migrates the database named by the URL in the configuration.

It never reads the application's settings, so the same scripts serve the CLI, the
tests and a deployment tool. On PostgreSQL, tables go to the first schema of the
connection's ``search_path`` (set with ``?options=-csearch_path%3D<schema>``).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

from storage.models import Base

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    """Return the URL passed by ``storage.migrate.alembic_config`` or an ini file."""
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("No database URL: build the configuration with alembic_config(url).")

    return str(url)


def run_migrations_offline() -> None:
    """Write the migration SQL for the URL's dialect instead of running it."""
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on a given connection, or on a new one to the URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on_connection(connection)
        return

    engine = create_engine(database_url(), poolclass=NullPool)
    try:
        with engine.connect() as new_connection:
            run_on_connection(new_connection)
    finally:
        engine.dispose()


def run_on_connection(connection: Connection) -> None:
    """Run the migrations in one transaction, after checking the target schema."""
    # Batch mode lets ALTER TABLE steps run on SQLite by copying the table.
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    # The check runs inside Alembic's transaction: a query before it would open a
    # transaction that Alembic treats as the caller's and never commits.
    with context.begin_transaction():
        check_target_schema(connection)
        context.run_migrations()


def check_target_schema(connection: Connection) -> None:
    """Raise RuntimeError when a PostgreSQL search_path names no existing schema."""
    if connection.dialect.name != "postgresql":
        return

    if connection.execute(text("SELECT current_schema()")).scalar() is None:
        raise RuntimeError(
            "The connection's search_path names no existing schema; create the schema "
            "before migrating."
        )


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
