"""The shared resources of one process: database, blob store, keys and Redis.

Each process (intake app, recordings worker, transcription worker, CLI) builds one
Runtime from the settings. Only the public keys are loaded here; a process that
needs a private key unlocks it itself, with its own passphrase.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from callcenter.settings import Settings
from storage.blobs import BlobStore
from storage.db import make_engine, make_session_factory
from storage.keys import KeyStore
from storage.sealing import PublicKey


@dataclass
class Runtime:
    settings: Settings
    _redis: Redis | None = field(default=None, repr=False)

    @cached_property
    def engine(self) -> Engine:
        engine = make_engine(self.settings.database.url)
        # rq forks a work-horse per job; pooled connections must not be shared with it.
        os.register_at_fork(after_in_child=lambda: engine.dispose(close=False))
        return engine

    @cached_property
    def session_factory(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)

    @cached_property
    def blobs(self) -> BlobStore:
        return BlobStore(self.settings.sealing.blobs_dir)

    @cached_property
    def keys(self) -> KeyStore:
        return KeyStore(self.settings.sealing.keys_dir)

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            self._redis = Redis.from_url(self.settings.redis.url)
        return self._redis

    def public_key(self, role: str) -> PublicKey:
        return self.keys.load_public(role)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """Open a session that rolls back on error and always closes."""
        session = self.session_factory()
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        if "engine" in self.__dict__:
            self.engine.dispose()
