"""Add confidentiality, caller hashes, referrals, identity requests and key rotations.

Also makes ``audit_events`` append-only inside the database: triggers reject every
UPDATE and DELETE (and TRUNCATE on PostgreSQL). A database owner can still drop the
triggers, which is why the chain's keyed hash and the exported head remain the check.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_APPEND_ONLY_MESSAGE = "audit_events is append-only"


def upgrade() -> None:
    _add_case_columns()
    _add_call_columns()
    _create_referrals()
    _create_identity_requests()
    _create_key_rotations()
    _create_audit_triggers()


def downgrade() -> None:
    _drop_audit_triggers()

    op.drop_index(op.f("ix_key_rotations_role"), table_name="key_rotations")
    op.drop_table("key_rotations")

    op.drop_index(op.f("ix_identity_requests_case_id"), table_name="identity_requests")
    op.drop_table("identity_requests")

    op.drop_index(op.f("ix_referrals_case_id"), table_name="referrals")
    op.drop_table("referrals")

    with op.batch_alter_table("calls") as batch:
        batch.drop_index(batch.f("ix_calls_caller_hash"))
        batch.drop_column("caller_hash")

    with op.batch_alter_table("cases") as batch:
        batch.drop_constraint(
            batch.f("fk_cases_identity_object_id_sealed_objects"), type_="foreignkey"
        )
        batch.drop_column("status_changed_at")
        batch.drop_column("identity_object_id")
        batch.drop_column("urgent")
        batch.drop_column("confidentiality")


def _add_case_columns() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("confidentiality", sa.String(length=16), nullable=True))
        batch.add_column(
            sa.Column("urgent", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(sa.Column("identity_object_id", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_foreign_key(
            batch.f("fk_cases_identity_object_id_sealed_objects"),
            "sealed_objects",
            ["identity_object_id"],
            ["id"],
        )

    # Existing cases entered their status no later than their last update.
    op.execute("UPDATE cases SET status_changed_at = updated_at")
    with op.batch_alter_table("cases") as batch:
        batch.alter_column(
            "status_changed_at", existing_type=sa.DateTime(timezone=True), nullable=False
        )


def _add_call_columns() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("caller_hash", sa.String(length=64), nullable=True))
        batch.create_index(batch.f("ix_calls_caller_hash"), ["caller_hash"], unique=False)


def _create_referrals() -> None:
    op.create_table(
        "referrals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("body", sa.String(length=64), nullable=False),
        sa.Column("referred_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name=op.f("fk_referrals_case_id_cases")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referrals")),
        sa.UniqueConstraint("case_id", "body", name=op.f("uq_referrals_case_id_body")),
    )
    op.create_index(op.f("ix_referrals_case_id"), "referrals", ["case_id"], unique=False)


def _create_identity_requests() -> None:
    op.create_table(
        "identity_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("body", sa.String(length=64), nullable=False),
        sa.Column("requested_by", sa.String(length=64), nullable=False),
        sa.Column("reason_code", sa.String(length=32), nullable=False),
        sa.Column("justification_object_id", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("decided_by", sa.String(length=64), nullable=True),
        sa.Column("decision_code", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_identity_requests_case_id_cases")
        ),
        sa.ForeignKeyConstraint(
            ["justification_object_id"],
            ["sealed_objects.id"],
            name=op.f("fk_identity_requests_justification_object_id_sealed_objects"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_requests")),
    )
    op.create_index(
        op.f("ix_identity_requests_case_id"), "identity_requests", ["case_id"], unique=False
    )


def _create_key_rotations() -> None:
    op.create_table(
        "key_rotations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("old_key_id", sa.String(length=64), nullable=False),
        sa.Column("new_key_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_by", sa.String(length=64), nullable=False),
        sa.Column("wraps_total", sa.Integer(), nullable=False),
        sa.Column("wraps_done", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_rotations")),
    )
    op.create_index(op.f("ix_key_rotations_role"), "key_rotations", ["role"], unique=False)


def _create_audit_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION audit_events_append_only() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN "
            f"RAISE EXCEPTION '{_APPEND_ONLY_MESSAGE}'; "
            "END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()"
        )
        return

    # The chain lock in storage.audit runs an UPDATE that matches no row, which fires
    # no row trigger. NOTE: a later batch migration of audit_events on SQLite copies
    # the table and loses these triggers, so such a migration must create them again.
    for statement in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER audit_events_no_{statement.lower()} BEFORE {statement} "
            f"ON audit_events BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY_MESSAGE}'); END"
        )


def _drop_audit_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_events_no_truncate ON audit_events")
        op.execute("DROP TRIGGER audit_events_no_change ON audit_events")
        op.execute("DROP FUNCTION audit_events_append_only()")
        return

    op.execute("DROP TRIGGER audit_events_no_delete")
    op.execute("DROP TRIGGER audit_events_no_update")
