"""Migrations: `upgrade head` equals the models, and every revision goes down and up."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect
from sqlalchemy.pool import NullPool

from storage.migrate import alembic_config, current_revision, downgrade, upgrade
from storage.models import Base

STORE_TABLES = set(Base.metadata.tables)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "fresh_postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


def revisions_oldest_first(url: str) -> list[str]:
    script = ScriptDirectory.from_config(alembic_config(url))
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def schema_differences(url: str) -> list[object]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences: list[object] = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()

    return differences


def table_names(url: str) -> set[str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_head_matches_models(database_url: str) -> None:
    upgrade(database_url)

    assert schema_differences(database_url) == []


def test_head_creates_every_table(database_url: str) -> None:
    upgrade(database_url)

    assert table_names(database_url) >= STORE_TABLES


def test_revision_before_upgrade(database_url: str) -> None:
    assert current_revision(database_url) is None


def test_revision_after_upgrade(database_url: str) -> None:
    upgrade(database_url)

    assert current_revision(database_url) == head_revision(database_url)


def test_downgrade_to_base_removes_tables(database_url: str) -> None:
    upgrade(database_url)
    downgrade(database_url, "base")

    assert table_names(database_url) & STORE_TABLES == set()


def test_upgrade_after_downgrade_matches_models(database_url: str) -> None:
    upgrade(database_url)
    downgrade(database_url, "base")
    upgrade(database_url)

    assert schema_differences(database_url) == []


def test_each_revision_steps_down_and_up(database_url: str) -> None:
    revisions = revisions_oldest_first(database_url)
    for revision in revisions:
        upgrade(database_url, revision)
        assert current_revision(database_url) == revision

    for previous in reversed([None, *revisions[:-1]]):
        downgrade(database_url, "-1")
        assert current_revision(database_url) == previous

    for revision in revisions:
        upgrade(database_url, "+1")
        assert current_revision(database_url) == revision


def test_config_needs_no_ini_file(tmp_path: Path) -> None:
    config = alembic_config(f"sqlite:///{tmp_path / 'x.sqlite3'}")

    assert config.config_file_name is None


def test_scripts_found_in_package(tmp_path: Path) -> None:
    config = alembic_config(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    location = Path(config.get_main_option("script_location") or "")

    assert (location / "env.py").is_file()


@pytest.mark.postgres
def test_tables_in_search_path_schema(fresh_postgres_url: str) -> None:
    upgrade(fresh_postgres_url)
    engine = create_engine(fresh_postgres_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            schema = connection.dialect.default_schema_name
            names = set(inspect(connection).get_table_names(schema=schema))
    finally:
        engine.dispose()

    assert names >= STORE_TABLES


@pytest.mark.postgres
def test_search_path_schema_is_per_test(fresh_postgres_url: str) -> None:
    engine = create_engine(fresh_postgres_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            schema = connection.dialect.default_schema_name
    finally:
        engine.dispose()

    assert (schema or "").startswith("test_")


@pytest.mark.postgres
def test_missing_schema_rejected() -> None:
    url = (
        "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        "?options=-csearch_path%3Dtest_schema_that_does_not_exist"
    )

    with pytest.raises(RuntimeError, match="search_path"):
        upgrade(url)
