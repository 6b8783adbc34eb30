"""Engines and sessions for SQLite (WAL) and PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, **options: Any) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys, secure delete and a busy timeout.

    WAL lets the intake app read while a worker writes, and the busy timeout makes
    a writer wait for the lock instead of failing a webhook at once.
    """
    if url.startswith("sqlite"):
        options.setdefault("connect_args", {"timeout": 30})
        create_private_sqlite_file(url)
    engine = create_engine(url, **options)

    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _configure_sqlite)

    return engine


def create_private_sqlite_file(url: str) -> None:
    """Create the SQLite file readable by its owner only, before SQLite creates it 0644.

    SQLite gives its -wal and -shm files the database file's mode, so they stay
    private too. The folder is made 0700 when this creates it.
    """
    database = make_url(url).database
    if not database or database == ":memory:":
        return

    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


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
