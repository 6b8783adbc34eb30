"""The ``callcenter`` command: serve, workers, database, keys, models, calls and the demo."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import click
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from callcenter.errors import CallcenterError
from callcenter.logs import configure_logging
from callcenter.runtime import Runtime
from callcenter.settings import Settings, load_settings
from ivr_flows.errors import FlowError
from storage.errors import StorageError
from storage.sealing import ALL_ROLES
from transcription.errors import TranscriptionError

logger = logging.getLogger("callcenter.cli")

KNOWN_ERRORS = (CallcenterError, FlowError, StorageError, TranscriptionError)


def _fail(error: Exception) -> NoReturn:
    click.echo(f"Error: {error}", err=True)
    sys.exit(1)


class _Group(click.Group):
    """Turn the project's own errors and unreachable services into one line on stderr."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KNOWN_ERRORS as error:
            _fail(error)
        except RedisConnectionError as error:
            settings = ctx.ensure_object(dict).get("settings")
            where = _masked(settings.redis.url) if settings else "Redis"
            _fail(
                CallcenterError(
                    f"cannot reach Redis at {where} ({error}). With the default empty redis.url, "
                    "start the embedded one first with `callcenter redis`; otherwise check "
                    "CALLCENTER_REDIS__URL."
                )
            )
        except OperationalError as error:
            settings = ctx.ensure_object(dict).get("settings")
            where = _masked(settings.database.url) if settings else "the database"
            reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
            _fail(
                CallcenterError(
                    f"cannot use the database at {where} ({reason}). Check that the server runs, "
                    "that CALLCENTER_DATABASE__URL is right, and run `callcenter db upgrade`."
                )
            )


def _masked(url: str) -> str:
    """Return a URL with any password replaced, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.ensure_object(dict).get("settings")
    if settings is None:
        settings = load_settings()
        configure_logging(settings.app.log_level)
        ctx.obj["settings"] = settings
    return settings


def _runtime(ctx: click.Context) -> Runtime:
    return Runtime(_settings(ctx))


@click.group(cls=_Group)
@click.pass_context
def main(ctx: click.Context) -> None:
    """Confidential telephone channel of the complaints platform."""
    ctx.ensure_object(dict)


@main.command()
@click.option("--host", help="Address to listen on (default: app.host).")
@click.option("--port", type=int, help="Port to listen on (default: app.port).")
@click.option(
    "--no-reconciler", is_flag=True, help="Do not run the outbox reconciler in this process."
)
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, no_reconciler: bool) -> None:
    """Run the intake app (voice webhooks) with a threaded server.

    Behind a TLS proxy in production, run it under gunicorn with
    `gunicorn 'callcenter:create_app()'` instead; the app is the same.
    """
    from werkzeug.serving import make_server

    from callcenter import create_app

    settings = _settings(ctx)
    app = create_app(settings)
    if not no_reconciler:
        _start_reconciler(Runtime(settings))

    server = make_server(host or settings.app.host, port or settings.app.port, app, threaded=True)
    logger.info("intake app listening on %s:%d", server.host, server.port)
    server.serve_forever()


def _start_reconciler(runtime: Runtime) -> threading.Thread:
    from callcenter.outbox import job_timeouts, reconcile_forever

    options = {
        "interval_seconds": runtime.settings.redis.reconcile_interval_seconds,
        "timeouts": job_timeouts(runtime.settings.transcription.job_timeout_seconds),
    }
    thread = threading.Thread(
        target=reconcile_forever,
        args=(runtime.session_factory, runtime.redis),
        kwargs=options,
        name="outbox-reconciler",
        daemon=True,
    )
    thread.start()
    return thread


@main.command()
@click.argument("queue", type=click.Choice(["recordings", "transcription"]))
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.pass_context
def worker(ctx: click.Context, queue: str, burst: bool) -> None:
    """Run a worker for the recordings or the transcription queue."""
    from callcenter.worker import run_worker

    run_worker(_runtime(ctx), queue, burst=burst)


@main.command("redis")
@click.pass_context
def redis_command(ctx: click.Context) -> None:
    """Run the embedded Redis on its Unix socket until interrupted."""
    from callcenter import embedded_redis

    settings = _settings(ctx)
    if not settings.redis.embedded:
        raise CallcenterError(
            f"redis.url is set to {settings.redis.url}; the embedded Redis is not used."
        )

    settings.app.instance_path.mkdir(parents=True, exist_ok=True, mode=0o700)
    process = embedded_redis.start(settings.redis.socket_path)
    if process is None:
        return

    # A service manager stops us with SIGTERM; the server must stop with us, flushing its AOF.
    def stop_on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_term)
    try:
        process.wait()
    except KeyboardInterrupt:
        embedded_redis.stop(process)
        logger.info("embedded Redis stopped")


@main.group()
def db() -> None:
    """Database migrations."""


@db.command("upgrade")
@click.option(
    "--revision", default="head", show_default=True, help="Alembic revision to upgrade to."
)
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Create or upgrade the tables."""
    from storage.migrate import current_revision, upgrade

    settings = _settings(ctx)
    settings.app.instance_path.mkdir(parents=True, exist_ok=True, mode=0o700)
    upgrade(settings.database.url, revision)
    click.echo(f"database at revision {current_revision(settings.database.url)}")


@db.command("downgrade")
@click.argument("revision")
@click.pass_context
def db_downgrade(ctx: click.Context, revision: str) -> None:
    """Downgrade the tables to REVISION (``base`` drops them all)."""
    from storage.migrate import current_revision, downgrade

    settings = _settings(ctx)
    downgrade(settings.database.url, revision)
    click.echo(f"database at revision {current_revision(settings.database.url)}")


@main.group()
def keys() -> None:
    """Role key pairs for sealing."""


@keys.command("init")
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(ALL_ROLES),
    help="Role to create a key pair for (repeatable; default: every role).",
)
@click.option("--if-missing", is_flag=True, help="Skip roles that already have a key.")
@click.pass_context
def keys_init(ctx: click.Context, roles: tuple[str, ...], if_missing: bool) -> None:
    """Create role key pairs; each private key is encrypted under CALLCENTER_<ROLE>_PASSPHRASE."""
    settings = _settings(ctx)
    store = Runtime(settings).keys
    wanted = [role for role in roles or ALL_ROLES if not (if_missing and role in store.roles())]
    # Every passphrase is checked first, so a missing one creates no key at all.
    passphrases = {role: settings.secrets.passphrase(role) for role in wanted}

    for role in roles or ALL_ROLES:
        if role not in passphrases:
            click.echo(f"{role}: key exists, kept")
            continue
        passphrase = passphrases[role]
        public = store.init_role(role, passphrase, settings.sealing.algorithm)
        click.echo(f"{role}: created key {public.key_id} ({public.algorithm})")


@keys.command("list")
@click.pass_context
def keys_list(ctx: click.Context) -> None:
    """List role keys and whether their private part is on this machine."""
    store = Runtime(_settings(ctx)).keys
    if not store.roles():
        click.echo(f"No keys in {store.directory}: run `callcenter keys init`.")
        return
    for role in store.roles():
        public = store.load_public(role)
        where = "private key on this machine" if store.has_private(role) else "public key only"
        click.echo(f"{role}\t{public.key_id}\t{public.algorithm}\t{where}")


@main.group()
def models() -> None:
    """Vosk speech models."""


@models.command("install")
@click.argument("code", type=click.Choice(["ar"]))
@click.option("--url", help="Download from this URL instead of the catalog's (a mirror).")
@click.option("--force", is_flag=True, help="Reinstall even if the model is present.")
@click.pass_context
def models_install(ctx: click.Context, code: str, url: str | None, force: bool) -> None:
    """Download, unpack and load-check a model (needs internet access)."""
    from transcription.catalog import CATALOG
    from transcription.install import install_model

    settings = _settings(ctx)
    spec = CATALOG[code]
    settings.transcription.models_dir.mkdir(parents=True, exist_ok=True)
    click.echo(f"Installing {spec.name} ({spec.license}): {spec.description}")

    with click.progressbar(length=0, label="Downloading", show_pos=True) as bar:

        def progress(done: int, total: int | None) -> None:
            if total and bar.length != total:
                bar.length = total
            bar.update(done - bar.pos)

        path = install_model(
            spec, settings.transcription.models_dir, url=url, progress=progress, force=force
        )

    click.echo(f"Installed and loaded: {path}")
    if code != settings.transcription.model:
        click.echo(
            f"To use it, set CALLCENTER_TRANSCRIPTION__MODEL={code} (now {settings.transcription.model!r})."
        )


@main.group("outbox")
def outbox_group() -> None:
    """Jobs waiting to reach the queues."""


@outbox_group.command("reconcile")
@click.option(
    "--loop", is_flag=True, help="Keep reconciling every redis.reconcile_interval_seconds."
)
@click.pass_context
def outbox_reconcile(ctx: click.Context, loop: bool) -> None:
    """Enqueue outbox rows whose jobs are missing from Redis."""
    from callcenter.outbox import job_timeouts, reconcile, reconcile_forever

    runtime = _runtime(ctx)
    timeouts = job_timeouts(runtime.settings.transcription.job_timeout_seconds)
    if loop:
        interval = runtime.settings.redis.reconcile_interval_seconds
        reconcile_forever(
            runtime.session_factory, runtime.redis, interval_seconds=interval, timeouts=timeouts
        )
    count = reconcile(runtime.session_factory, runtime.redis, timeouts=timeouts)
    click.echo(f"re-enqueued {count} job(s)")


@main.group("recordings")
def recordings_group() -> None:
    """Recordings that need a person."""


@recordings_group.command("retry")
@click.argument("recording_id", type=int)
@click.pass_context
def recordings_retry(ctx: click.Context, recording_id: int) -> None:
    """Queue the download of a recording again after a failure."""
    from sqlalchemy import func, select

    from callcenter import outbox
    from storage.models import OutboxMessage, Recording

    runtime = _runtime(ctx)
    with runtime.session() as session:
        recording = session.get(Recording, recording_id)
        if recording is None:
            raise CallcenterError(
                f"recording {recording_id} not found: check the id in the case view."
            )
        retries = session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(
                OutboxMessage.job_name == outbox.PROCESS_RECORDING,
                OutboxMessage.entity_id == recording.id,
            )
        )
        message = outbox.add_message(
            session,
            queue=outbox.RECORDINGS_QUEUE,
            job_name=outbox.PROCESS_RECORDING,
            entity_id=recording.id,
            attempt=int(retries or 0),
        )
        session.commit()
        outbox.enqueue(session, runtime.redis, message)
    click.echo(f"queued recording {recording_id} again")


@main.command("simulate-call")
@click.option(
    "--digits",
    default="1,2,2,2,1,2,1",
    show_default=True,
    help="Keys for each menu in order, comma-separated; an empty item is silence. The default files a human-rights complaint in Arabic.",
)
@click.option(
    "--audio",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="WAV file the caller speaks.",
)
@click.option(
    "--caller",
    default="+962790000001",
    show_default=True,
    help="Caller number the emulator sends as From.",
)
@click.pass_context
def simulate_call(ctx: click.Context, digits: str, audio: Path, caller: str) -> None:
    """Phone the running intake app through the local Twilio emulator.

    The emulator serves the recording on twilio.api_base_url, which must be a
    loopback http:// address here, and the app must be configured with the same one.
    """
    from callcenter.simulate import simulate_call as run

    result = run(
        _settings(ctx),
        digits=[d or None for d in digits.split(",")],
        audio=audio.read_bytes(),
        caller=caller,
    )
    for heard in result.heard:
        if heard.verb == "Say":
            click.echo(f"[{heard.language}] {heard.text}")
        elif heard.verb in ("Play", "Record", "Hangup"):
            click.echo(f"<{heard.verb}> {heard.url}".rstrip())

    reference = _reference_of(ctx, result.call_sid)
    summary = {
        "call_sid": result.call_sid,
        "status": result.status,
        "reference": reference,
        "recordings": result.recording_sids,
        "errors": result.errors,
    }
    click.echo(json.dumps(summary))
    if result.status != "completed" or result.errors:
        raise CallcenterError(
            f"the simulated call ended {result.status} with Twilio errors {result.errors or 'none'}: "
            f"is the intake app running at {_settings(ctx).app.public_base_url}?"
        )


def _reference_of(ctx: click.Context, call_sid: str) -> str | None:
    from sqlalchemy import select

    from storage.models import Call, Case

    with _runtime(ctx).session() as session:
        return session.scalar(
            select(Case.reference)
            .join(Call, Call.case_id == Case.id)
            .where(Call.call_sid == call_sid)
        )


@main.command()
@click.option(
    "--timeout", default=600, show_default=True, help="Seconds to wait for the transcript."
)
@click.pass_context
def demo(ctx: click.Context, timeout: int) -> None:
    """Run one phone complaint end to end on embedded defaults and print the case."""
    from callcenter.demo import run_demo

    click.echo(json.dumps(run_demo(timeout=timeout), ensure_ascii=False))


@main.group()
def case() -> None:
    """Cases in the complaint store."""


@case.command("show")
@click.argument("reference")
@click.option(
    "--actor", required=True, help="Who reads the case; written to the audit log with the unseal."
)
@click.pass_context
def case_show(ctx: click.Context, reference: str, actor: str) -> None:
    """Print a case as JSON, opening its transcript with the case office key.

    Needs CALLCENTER_CASE_OFFICE_PASSPHRASE; every read is an audit event.
    """
    from callcenter.cases import read_case

    click.echo(json.dumps(read_case(_runtime(ctx), reference, actor=actor), ensure_ascii=False))


@main.group()
def flows() -> None:
    """IVR flow files."""


@flows.command("check")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.pass_context
def flows_check(ctx: click.Context, files: tuple[str, ...]) -> None:
    """Validate flow files (default: the configured flow)."""
    from ivr_flows.loader import load_flow

    for name in files or (_settings(ctx).voice.flow,):
        flow = load_flow(name)
        click.echo(f"{flow.source}: flow {flow.id!r} is valid ({len(flow.nodes)} nodes)")


@flows.command("walk")
@click.argument("file")
@click.option("--verbose", "-v", is_flag=True, help="Print every prompt each call heard.")
def flows_walk(file: str, verbose: bool) -> None:
    """Call a private copy of the app through the emulator once per branch of FILE.

    Every menu key, silence, 0, * and recording outcome of every node is taken at
    least once, in every language of the flow. Exits with status 1 if any call fails.
    """
    from callcenter.walk import WalkResult, walk

    configure_logging("WARNING")

    def report(result: WalkResult) -> None:
        mark = "ok  " if result.ok else "FAIL"
        click.echo(f"{mark} {result.script.describe()}")
        for problem in result.problems:
            click.echo(f"       problem: {problem}")
        if verbose or not result.ok:
            for heard in result.heard:
                if heard.verb == "Say":
                    click.echo(f"       [{heard.language}] {heard.text}")
                elif heard.verb in ("Play", "Record", "Enqueue", "Hangup"):
                    click.echo(f"       <{heard.verb}> {heard.url}".rstrip())

    results = walk(file, report=report)
    failed = sum(not result.ok for result in results)
    click.echo(f"{len(results) - failed} passed, {failed} failed")
    if failed:
        sys.exit(1)


@flows.command("graph")
@click.argument("file")
@click.option(
    "--out",
    "output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="SVG file to write.",
)
@click.option(
    "--language", help="Language of the prompt excerpts (default: the flow's last, usually en)."
)
def flows_graph(file: str, output: Path, language: str | None) -> None:
    """Draw the menu tree of FILE as an SVG diagram (needs Graphviz)."""
    from ivr_flows.graph import render_svg
    from ivr_flows.loader import load_flow

    render_svg(load_flow(file), output, language)
    click.echo(f"wrote {output}")


def _register_security_commands() -> None:
    # Imported last: security_cli adds its commands to the groups defined above.
    from callcenter.security_cli import register

    register(main, keys)


_register_security_commands()
