"""Commands for keys, the audit chain, retention, case erasure, referrals and identity requests.

:func:`register` adds them to the ``callcenter`` command:

    keys add ROLE | rotate ROLE | revoke ROLE | status
    audit verify [--head H] | head
    retention run [--dry-run] [--loop]
    case erase REFERENCE --reason R | case refer REFERENCE --body B
    identity request | pending | justification | approve | refuse

Every command that opens, moves or destroys a key wrap writes an audit event. Output
names cases by reference and objects by id, never by content or caller number.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from callcenter.errors import CallcenterError
from callcenter.identity import (
    APPROVAL_DECISIONS,
    BODY_ROLE_PREFIX,
    OFFICER_ROLE_PREFIX,
    REFUSAL_DECISIONS,
    Decision,
    RequestReason,
    approve_identity_request,
    read_justification,
    refer_case,
    refuse_identity_request,
    request_identity,
)
from callcenter.logs import configure_logging
from callcenter.references import is_valid_reference
from callcenter.retention import ErasureReason, erase_case, finish_erasure, run_retention
from callcenter.runtime import Runtime
from callcenter.settings import Settings, load_settings
from storage.audit import append_event, verify_chain
from storage.key_lifecycle import (
    ProgressCallback,
    RotationSecrets,
    objects_per_key,
    revoke_wraps,
    rewrap_to_current,
    rotate_role_key,
    unfinished_rotation,
)
from storage.models import Case, IdentityRequest, IdentityRequestStatus, KeyWrap
from storage.sealing import ALL_ROLES, ROLE_CASE_OFFICE, ROLE_IDENTITY_CUSTODIAN, check_role_name

ACTOR_HELP = "Who runs the command; written to the audit log."


def register(main: click.Group, keys: click.Group) -> None:
    """Add the commands of this module to the ``callcenter`` group and its ``keys`` group."""
    for command in (keys_add, keys_rotate, keys_revoke, keys_status):
        keys.add_command(command)

    main.add_command(audit)
    main.add_command(retention)
    main.add_command(identity)

    case_group = main.commands.get("case")
    if not isinstance(case_group, click.Group):
        case_group = click.Group("case", help="Cases in the complaint store.")
        main.add_command(case_group)
    case_group.add_command(case_erase)
    case_group.add_command(case_refer)


def _settings(ctx: click.Context) -> Settings:
    cache = ctx.ensure_object(dict)
    settings: Settings | None = cache.get("settings")
    if settings is None:
        settings = load_settings()
        configure_logging(settings.app.log_level)
        cache["settings"] = settings

    return settings


@contextmanager
def _runtime(ctx: click.Context) -> Iterator[Runtime]:
    runtime = Runtime(_settings(ctx))
    try:
        yield runtime
    finally:
        runtime.close()


def _case_by_reference(session: Session, reference: str) -> Case:
    if not is_valid_reference(reference):
        raise CallcenterError(
            f"{reference!r} is not a valid reference: it has 10 digits and the last is a check digit."
        )

    case = session.scalar(select(Case).where(Case.reference == reference))
    if case is None:
        raise CallcenterError(f"No case with reference {reference}.")

    return case


def _identity_request(session: Session, request_id: int) -> IdentityRequest:
    request = session.get(IdentityRequest, request_id)
    if request is None:
        raise CallcenterError(
            f"Identity request {request_id} not found: list pending ones with `callcenter identity pending`."
        )

    return request


# keys ------------------------------------------------------------------------------


@click.command("add")
@click.argument("role")
@click.option("--actor", required=True, help=ACTOR_HELP)
@click.option("--if-missing", is_flag=True, help="Do nothing when the role already has a key.")
@click.pass_context
def keys_add(ctx: click.Context, role: str, actor: str, if_missing: bool) -> None:
    """Create the key pair of a government body (body_<code>) or an officer (officer_<name>).

    The private key is encrypted under CALLCENTER_<ROLE>_PASSPHRASE. Copy the public
    file to the machines that refer cases; the private file goes to the body's or the
    officer's own machine only.
    """
    check_role_name(role)
    if not role.startswith((BODY_ROLE_PREFIX, OFFICER_ROLE_PREFIX)):
        raise CallcenterError(
            f"Invalid role {role!r}: use body_<code> for a government body or "
            f"officer_<name> for an officer; the roles {', '.join(ALL_ROLES)} are made by "
            "`callcenter keys init`."
        )

    settings = _settings(ctx)
    with _runtime(ctx) as runtime:
        if if_missing and runtime.keys.current_key_id(role) is not None:
            click.echo(f"{role}: key exists, kept")
            return

        public = runtime.keys.init_role(
            role, settings.secrets.passphrase(role), settings.sealing.algorithm
        )
        with runtime.session() as session:
            append_event(
                session,
                chain_key=settings.require_audit_key(),
                actor=actor,
                action="key.created",
                details={"role": role, "key_id": public.key_id, "algorithm": public.algorithm},
            )
            session.commit()

    click.echo(f"{role}: created key {public.key_id} ({public.algorithm})")


@click.command("rotate")
@click.argument("role")
@click.option("--actor", default="key-rotation", show_default=True, help=ACTOR_HELP)
@click.option(
    "--rewrap-only",
    is_flag=True,
    help="Create no key; move wraps of the role's retired keys to its current key.",
)
@click.pass_context
def keys_rotate(ctx: click.Context, role: str, actor: str, rewrap_only: bool) -> None:
    """Create a new key for ROLE and re-wrap every data key sealed to its old keys.

    Resumable: when an earlier rotation of ROLE was interrupted, this continues it.
    Old wraps are deleted only after the new ones unwrap to the same data key. The
    current key opens with CALLCENTER_<ROLE>_PASSPHRASE; the new key is protected by
    CALLCENTER_<ROLE>_NEW_PASSPHRASE when set, by the same passphrase otherwise.
    Afterwards, copy the new public file to every machine that seals to ROLE and
    restart the processes that hold its private key.
    """
    check_role_name(role)
    settings = _settings(ctx)

    with _runtime(ctx) as runtime, _progress_bar(f"Re-wrapping {role}") as progress:
        if rewrap_only:
            moved = rewrap_to_current(
                runtime.session_factory,
                runtime.keys,
                role,
                settings.secrets.passphrase(role),
                chain_key=settings.require_audit_key(),
                actor=actor,
                batch_size=settings.sealing.rotation_batch_size,
                progress=progress,
            )
            click.echo(f"{role}: moved {moved} wraps to key {runtime.keys.current_key_id(role)}")
            return

        result = rotate_role_key(
            runtime.session_factory,
            runtime.keys,
            role,
            RotationSecrets(
                passphrase=settings.secrets.passphrase(role),
                new_passphrase=settings.secrets.new_passphrase(role),
            ),
            algorithm=settings.sealing.algorithm,
            chain_key=settings.require_audit_key(),
            actor=actor,
            batch_size=settings.sealing.rotation_batch_size,
            progress=progress,
        )

    resumed = " (resumed)" if result.resumed else ""
    click.echo(
        f"{role}: rotated from key {result.old_key_id} to {result.new_key_id}{resumed}; "
        f"{result.wraps_moved} wraps moved"
    )


@contextmanager
def _progress_bar(label: str) -> Iterator[ProgressCallback]:
    with click.progressbar(length=0, label=label, show_pos=True, file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            if bar.length != total:
                bar.length = total
            bar.update(done - bar.pos)

        yield progress


@click.command("revoke")
@click.argument("role")
@click.option("--key-id", help="Revoke only this key of the role (default: every key of it).")
@click.option("--actor", required=True, help=ACTOR_HELP)
@click.option("--keep-key", is_flag=True, help="Keep the role's current key files for new wraps.")
@click.pass_context
def keys_revoke(
    ctx: click.Context, role: str, key_id: str | None, actor: str, keep_key: bool
) -> None:
    """Delete every key wrap of a body's or an officer's role, and retire its key files.

    From then on the role's private key opens nothing in this database. Referrals of
    the role are marked revoked, and so are its approved identity requests.
    """
    check_role_name(role)
    if role in ALL_ROLES:
        raise CallcenterError(
            f"Role {role!r} cannot be revoked, because every object depends on it; rotate "
            f"its key with `callcenter keys rotate {role}` instead."
        )

    settings = _settings(ctx)
    with _runtime(ctx) as runtime, runtime.session() as session:
        known = role in runtime.keys.roles() or session.scalar(
            select(KeyWrap.id).where(KeyWrap.role == role).limit(1)
        )
        if not known:
            raise CallcenterError(
                f"Role {role!r} has no key and no wraps, so there is nothing to revoke: check "
                "the spelling against `callcenter keys status`."
            )
        count = revoke_wraps(
            session, role, key_id=key_id, chain_key=settings.require_audit_key(), actor=actor
        )
        session.commit()

        if not keep_key and key_id in (None, runtime.keys.current_key_id(role)):
            runtime.keys.retire(role)

    click.echo(f"{role}: revoked {count} wraps")


@click.command("status")
@click.pass_context
def keys_status(ctx: click.Context) -> None:
    """List every key with its age and how many objects it still opens."""
    with _runtime(ctx) as runtime, runtime.session() as session:
        usage = objects_per_key(session)
        keys = runtime.keys.list_keys()
        now = datetime.now(UTC)

        click.echo("role\tkey id\talgorithm\tstate\tprivate key\tage (days)\tobjects")
        for info in keys:
            state = "current" if info.current else "retired"
            private = "here" if info.has_private else "not here"
            age = (now - info.created_at).days
            click.echo(
                f"{info.role}\t{info.key_id}\t{info.algorithm}\t{state}\t{private}\t{age}\t"
                f"{usage.get(info.key_id, 0)}"
            )

        _echo_warnings(session, runtime, usage, {info.key_id for info in keys})


def _echo_warnings(
    session: Session, runtime: Runtime, usage: dict[str, int], known: set[str]
) -> None:
    for info in runtime.keys.list_keys():
        if not info.current and usage.get(info.key_id, 0):
            click.echo(
                f"warning: retired key {info.key_id} of {info.role} still opens "
                f"{usage[info.key_id]} objects; run `callcenter keys rotate {info.role} --rewrap-only`",
                err=True,
            )

        rotation = unfinished_rotation(session, info.role) if info.current else None
        if rotation is not None:
            click.echo(
                f"warning: rotation of {info.role} stopped at {rotation.wraps_done} of "
                f"{rotation.wraps_total} wraps; run `callcenter keys rotate {info.role}` to resume",
                err=True,
            )

    for key_id in sorted(set(usage) - known):
        click.echo(
            f"warning: key {key_id} opens {usage[key_id]} objects but has no file here",
            err=True,
        )


# audit -----------------------------------------------------------------------------


@click.group()
def audit() -> None:
    """The tamper-evident audit chain."""


@audit.command("verify")
@click.option(
    "--head",
    "known_head",
    help="A head hash printed earlier by `audit head`; missing newest events are reported.",
)
@click.pass_context
def audit_verify(ctx: click.Context, known_head: str | None) -> None:
    """Recompute the chain and report the first broken link; exit status 1 when broken."""
    if known_head is not None:
        known_head = known_head.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", known_head):
            raise CallcenterError(
                f"--head {known_head!r} is not a chain head: it is the 64 hex digits that "
                "`callcenter audit head` printed. Copy it again."
            )

    settings = _settings(ctx)
    with _runtime(ctx) as runtime, runtime.session() as session:
        result = verify_chain(session, settings.require_audit_key(), known_head)

    if result.ok:
        click.echo(f"audit chain intact: {result.count} events, head {result.head_hash}")
        return

    where = (
        f"first broken event {result.first_broken_id}" if result.first_broken_id else "end of chain"
    )
    click.echo(
        f"audit chain BROKEN at {where}: {result.reason}. {result.count} events verified "
        f"before it; last good head {result.head_hash}",
        err=True,
    )
    ctx.exit(1)


@audit.command("head")
@click.pass_context
def audit_head(ctx: click.Context) -> None:
    """Print the verified chain head hash, to store off this machine.

    Pass it later to `audit verify --head` to detect deleted newest events. Refuses,
    with exit status 1, when the chain does not verify.
    """
    settings = _settings(ctx)
    with _runtime(ctx) as runtime, runtime.session() as session:
        result = verify_chain(session, settings.require_audit_key())

    if not result.ok:
        click.echo(f"audit chain broken ({result.reason}); run `callcenter audit verify`", err=True)
        ctx.exit(1)

    click.echo(result.head_hash)


# retention -------------------------------------------------------------------------


@click.group()
def retention() -> None:
    """Retention periods and crypto-erasure."""


@retention.command("run")
@click.option("--dry-run", is_flag=True, help="Count what would be erased; change nothing.")
@click.option(
    "--loop", is_flag=True, help="Run again every retention.interval_seconds until stopped."
)
@click.pass_context
def retention_run(ctx: click.Context, dry_run: bool, loop: bool) -> None:
    """Crypto-erase every object whose retention period has ended, then its ciphertext.

    Run it from cron or a systemd timer, or keep it running with --loop.
    """
    settings = _settings(ctx)
    with _runtime(ctx) as runtime:
        while True:
            report = run_retention(
                runtime.session_factory,
                runtime.blobs,
                settings.retention,
                chain_key=settings.require_audit_key(),
                dry_run=dry_run,
            )
            verb = "would erase" if dry_run else "erased"
            counts = ", ".join(f"{kind} {count}" for kind, count in sorted(report.erased.items()))
            click.echo(
                f"{verb} {report.total} objects ({counts or 'none'}); deleted {report.blobs_deleted} blobs"
            )
            if not loop:
                return
            time.sleep(settings.retention.interval_seconds)


# case ------------------------------------------------------------------------------


@click.command("erase")
@click.argument("reference")
@click.option(
    "--reason",
    required=True,
    type=click.Choice([reason.value for reason in ErasureReason]),
    help="Why the case is erased before its retention period ends.",
)
@click.option("--actor", required=True, help=ACTOR_HELP)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def case_erase(ctx: click.Context, reference: str, reason: str, actor: str, yes: bool) -> None:
    """Crypto-erase every recording, transcript, note and identity record of a case.

    This cannot be undone: no key, including the case office's, opens them afterwards.
    The case keeps its reference and its audit events.
    """
    settings = _settings(ctx)
    if not yes:
        click.confirm(f"Erase case {reference} permanently?", abort=True)

    with _runtime(ctx) as runtime, runtime.session() as session:
        case = _case_by_reference(session, reference)
        object_ids = erase_case(
            session,
            case,
            chain_key=settings.require_audit_key(),
            actor=actor,
            reason=ErasureReason(reason),
        )
        session.commit()
        blobs = finish_erasure(session, runtime.blobs, object_ids)

    click.echo(f"case {reference}: erased {len(object_ids)} objects, deleted {blobs} blobs")


@click.command("refer")
@click.argument("reference")
@click.option("--body", required=True, help="Key role of the body, such as body_psd.")
@click.option("--actor", required=True, help=ACTOR_HELP)
@click.pass_context
def case_refer(ctx: click.Context, reference: str, body: str, actor: str) -> None:
    """Refer a case to a government body: wrap its content, never the identity, to the body's key.

    Needs CALLCENTER_CASE_OFFICE_PASSPHRASE, because the case office's key unwraps
    each data key before it is wrapped to the body.
    """
    settings = _settings(ctx)
    with _runtime(ctx) as runtime:
        case_office_key = runtime.keys.load_private(
            ROLE_CASE_OFFICE, settings.secrets.passphrase(ROLE_CASE_OFFICE)
        )
        with runtime.session() as session:
            case = _case_by_reference(session, reference)
            refer_case(
                session, runtime, case=case, body=body, actor=actor, case_office_key=case_office_key
            )
            session.commit()

    click.echo(f"case {reference}: referred to {body}")


# identity --------------------------------------------------------------------------


@click.group()
def identity() -> None:
    """Requests for a caller's identity, decided by the identity custodian."""


@identity.command("request")
@click.argument("reference")
@click.option("--body", required=True, help="Key role of the officer's body, such as body_psd.")
@click.option("--officer", required=True, help="The requesting officer; written to the audit log.")
@click.option(
    "--reason",
    required=True,
    type=click.Choice([reason.value for reason in RequestReason]),
    help="Why the identity is needed.",
)
@click.option(
    "--justification-file",
    type=click.File("r", encoding="utf-8"),
    help="File with the free-text justification ('-' reads stdin); sealed to the custodian.",
)
@click.pass_context
def identity_request(
    ctx: click.Context,
    reference: str,
    body: str,
    officer: str,
    reason: str,
    justification_file: IO[str] | None,
) -> None:
    """File a request for the identity of the caller of a case referred to BODY."""
    justification = justification_file.read().strip() if justification_file else None

    with _runtime(ctx) as runtime, runtime.session() as session:
        case = _case_by_reference(session, reference)
        request = request_identity(
            session,
            runtime,
            case=case,
            body=body,
            officer=officer,
            reason=RequestReason(reason),
            justification=justification or None,
        )
        session.commit()

    click.echo(f"identity request {request.id} filed for case {reference}; awaiting the custodian")


@identity.command("pending")
@click.pass_context
def identity_pending(ctx: click.Context) -> None:
    """List pending identity requests as JSON lines."""
    with _runtime(ctx) as runtime, runtime.session() as session:
        rows = session.execute(
            select(IdentityRequest, Case.reference)
            .join(Case, Case.id == IdentityRequest.case_id)
            .where(IdentityRequest.status == IdentityRequestStatus.PENDING.value)
            .order_by(IdentityRequest.id)
        ).all()
        for request, reference in rows:
            click.echo(
                json.dumps(
                    {
                        "request": request.id,
                        "case": reference,
                        "body": request.body,
                        "officer": request.requested_by,
                        "reason": request.reason_code,
                        "justification": request.justification_object_id is not None,
                        "filed_at": request.created_at.isoformat(timespec="seconds"),
                    }
                )
            )


@identity.command("justification")
@click.argument("request_id", type=int)
@click.option("--custodian", required=True, help="The identity custodian reading it.")
@click.pass_context
def identity_justification(ctx: click.Context, request_id: int, custodian: str) -> None:
    """Print a request's justification, opened with the custodian's key (an audited read)."""
    settings = _settings(ctx)
    with _runtime(ctx) as runtime:
        custodian_key = runtime.keys.load_private(
            ROLE_IDENTITY_CUSTODIAN, settings.secrets.passphrase(ROLE_IDENTITY_CUSTODIAN)
        )
        with runtime.session() as session:
            text = read_justification(
                session,
                runtime.blobs,
                request=_identity_request(session, request_id),
                custodian_key=custodian_key,
                actor=custodian,
                chain_key=settings.require_audit_key(),
            )
            session.commit()

    click.echo(text if text is not None else "(no justification was given)")


@identity.command("approve")
@click.argument("request_id", type=int)
@click.option("--custodian", required=True, help="The identity custodian deciding.")
@click.option(
    "--decision",
    required=True,
    type=click.Choice([decision.value for decision in APPROVAL_DECISIONS]),
    help="Ground for the approval.",
)
@click.pass_context
def identity_approve(ctx: click.Context, request_id: int, custodian: str, decision: str) -> None:
    """Approve a request: wrap the caller's identity record to the requesting body's key.

    Needs CALLCENTER_IDENTITY_CUSTODIAN_PASSPHRASE.
    """
    settings = _settings(ctx)
    with _runtime(ctx) as runtime:
        custodian_key = runtime.keys.load_private(
            ROLE_IDENTITY_CUSTODIAN, settings.secrets.passphrase(ROLE_IDENTITY_CUSTODIAN)
        )
        with runtime.session() as session:
            request = _identity_request(session, request_id)
            approve_identity_request(
                session,
                runtime,
                request=request,
                custodian=custodian,
                custodian_key=custodian_key,
                decision=Decision(decision),
            )
            session.commit()

    click.echo(f"identity request {request_id} approved; {request.body} can now open the identity")


@identity.command("refuse")
@click.argument("request_id", type=int)
@click.option("--custodian", required=True, help="The identity custodian deciding.")
@click.option(
    "--decision",
    required=True,
    type=click.Choice([decision.value for decision in REFUSAL_DECISIONS]),
    help="Ground for the refusal.",
)
@click.pass_context
def identity_refuse(ctx: click.Context, request_id: int, custodian: str, decision: str) -> None:
    """Refuse a request; the identity record stays wrapped to the custodian alone."""
    with _runtime(ctx) as runtime, runtime.session() as session:
        request = _identity_request(session, request_id)
        refuse_identity_request(
            session, runtime, request=request, custodian=custodian, decision=Decision(decision)
        )
        session.commit()

    click.echo(f"identity request {request_id} refused")
