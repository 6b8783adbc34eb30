"""Engines and sessions for SQLite (WAL) and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, **options: Any) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys, secure delete and a busy timeout.

    WAL lets the intake app read while a worker writes, and the busy timeout makes
    a writer wait for the lock instead of failing a webhook at once.
    """
    if url.startswith("sqlite"):
        options.setdefault("connect_args", {"timeout": 30})
    engine = create_engine(url, **options)

    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _configure_sqlite)

    return engine


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=FULL")
    # Deleted rows are overwritten with zeros, so an erased object's key wraps do not
    # linger in free pages of the database file (see storage.vault.destroy_wraps).
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Return a session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)
