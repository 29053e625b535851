"""The ``rewardpoints`` command: serve, migrate, token.

Built on Typer: help texts with defaults and choices, ``--version``, shell completion. A
configuration or start-up failure prints one line naming the setting or option, what was wrong
and the expected form, and exits non-zero; ``--log-level debug`` adds the traceback.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, NoReturn

import typer

from . import __version__
from .config import Settings
from .embedded import EmbeddedClusterError

if TYPE_CHECKING:
    from alembic.config import Config
    from fastapi import FastAPI

    from .transfer import Imported

log = logging.getLogger("rewardpoints")
# Set by `serve --workers N` on the embedded cluster: the file its workers hold a lock on.
WORKER_CLUSTER_USERS = "REWARDPOINTS_EMBEDDED_CLUSTER_USERS"
PREFIX = "REWARDPOINTS_"
# Exit codes: 2 for configuration and usage (as Click's usage errors), 1 for start-up failures.
CONFIGURATION_ERROR = 2
START_UP_ERROR = 1


class Format(StrEnum):
    json = "json"
    ndjson = "ndjson"


class LogLevel(StrEnum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"
    trace = "trace"


app = typer.Typer(
    name="rewardpoints",
    help="A points ledger compatible with Emporix's Reward Points Service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
migrate_app = typer.Typer(
    help="Apply or inspect the database migrations (Alembic). Without a verb: upgrade head.",
    pretty_exceptions_enable=False,
)
app.add_typer(migrate_app, name="migrate")


class Failure(Exception):
    """A failure a person can act on: printed as one line, then exit ``code``."""

    def __init__(self, message: str, code: int = START_UP_ERROR) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int) -> NoReturn:
    print(f"rewardpoints: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        print(f"rewardpoints {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """A points ledger compatible with Emporix's Reward Points Service."""


def load_settings() -> Settings:
    """Settings from the environment and ``.env``; a bad value exits with one line naming
    its variable."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as error:
        problems = []
        for problem in error.errors():
            field = ".".join(str(part) for part in problem.get("loc", ()))
            name = f"{PREFIX}{field.upper()}" if field else "settings"
            message = str(problem.get("msg", "invalid")).removeprefix("Value error, ")
            given = problem.get("input")
            shown = "" if field in ("jwt_secret",) or isinstance(given, dict) else f"={given!r}"
            problems.append(f"{name}{shown}: {message}")
        fail("; ".join(problems), CONFIGURATION_ERROR)


def _configure_logging(level: LogLevel, settings: Settings | None = None) -> dict[str, Any]:
    """The process log as configured (text until the settings are read); returns the
    configuration, for uvicorn to apply in its workers too."""
    import logging.config

    from .logs import log_config

    name = "DEBUG" if level is LogLevel.trace else level.value.upper()
    config = log_config(settings.log_format if settings else "text", name)
    logging.config.dictConfig(config)
    return config


@contextlib.contextmanager
def failures(level: LogLevel) -> Iterator[None]:
    """Start-up failures as one line (with the traceback at debug)."""
    try:
        yield
    except Failure as error:
        if level in (LogLevel.debug, LogLevel.trace):
            log.exception("start-up failed")
        fail(str(error), error.code)
    except EmbeddedClusterError as error:
        fail(str(error), CONFIGURATION_ERROR)


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """The configured database's URL, or the embedded cluster's while it is in use."""
    if settings.database_url is not None:
        os.environ.pop(WORKER_CLUSTER_USERS, None)
        yield settings.database_url
        return
    from .embedded import embedded_cluster, users_file

    data_dir = settings.data_dir.expanduser().absolute()
    with embedded_cluster(data_dir) as url:
        log.info(
            "database: the embedded PostgreSQL in %s (the default; set "
            "REWARDPOINTS_DATABASE_URL to use another)",
            data_dir,
        )
        os.environ[WORKER_CLUSTER_USERS] = str(users_file(data_dir))
        yield url


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[Settings]:
    """The settings with the database's URL: the configured one, or the embedded cluster's,
    started for as long as the block runs. SIGTERM ends the block the way Ctrl-C does, so the
    embedded cluster is stopped whatever order the signal handlers run in."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with database_url(settings) as url:
        # uvicorn's workers build the app from Settings() again: they find the URL here.
        os.environ["REWARDPOINTS_DATABASE_URL"] = url
        yield settings.model_copy(update={"database_url": url})


def migrations_dir() -> Path:
    """The Alembic scripts: inside the installed package, or beside ``src/`` in a checkout."""
    packaged = Path(__file__).with_name("migrations")
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(settings: Settings) -> Config:
    from alembic.config import Config

    from .db import connect_args

    if settings.database_url is None:
        raise ValueError("migrations need a database URL; database() provides the embedded one")
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["database_url"] = settings.database_url
    config.attributes["connect_args"] = connect_args(settings)
    return config


def migrate(settings: Settings) -> None:
    """Upgrade the database to the newest schema."""
    from alembic import command

    with unreachable_database_as_failure(settings):
        command.upgrade(alembic_config(settings), "head")


@contextlib.contextmanager
def unreachable_database_as_failure(settings: Settings) -> Iterator[None]:
    """A database that cannot be reached, refuses us or fails the migration, as one line
    naming where it is."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    try:
        yield
    except (OSError, TimeoutError, DBAPIError) as error:
        if os.environ.get(WORKER_CLUSTER_USERS):
            where = "the embedded PostgreSQL"
        else:
            shown = make_url(settings.database_url or "").render_as_string(hide_password=True)
            where = f"REWARDPOINTS_DATABASE_URL ({shown})"
        reason = getattr(error, "orig", None) or error
        raise Failure(f"cannot use the database at {where}: {reason}") from error


# ---- serve ------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=256, help="Worker processes (uvicorn's).")] = 1,
    log_level: Annotated[LogLevel, typer.Option(help="Least severe level logged.")] = (
        LogLevel.info
    ),
    access_log: Annotated[bool, typer.Option(help="Log each request.")] = True,
) -> None:
    """Apply pending migrations, then serve the API.

    Without REWARDPOINTS_DATABASE_URL the service runs on its embedded PostgreSQL in
    REWARDPOINTS_DATA_DIR. Without a configured JWT key it signs with a development key, and
    then serves on loopback only.
    """
    settings = load_settings()
    if settings.metrics_enabled:
        # Before anything imports prometheus_client: every process writes its values here.
        metrics_dir = tempfile.mkdtemp(prefix="rewardpoints-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    logs = _configure_logging(log_level, settings)
    if not settings.has_configured_key and not is_loopback(host):
        fail(
            f"--host {host} serves beyond this machine, but no JWT key is configured: set "
            "REWARDPOINTS_JWT_SECRET (32 bytes or more), REWARDPOINTS_JWT_PUBLIC_KEY or "
            "REWARDPOINTS_JWT_JWKS_URL; the development key is only for --host 127.0.0.1",
            CONFIGURATION_ERROR,
        )
    try:
        with failures(log_level), database(settings) as settings:
            _serve(settings, host, port, workers, log_level, access_log, logs)
    finally:
        if settings.metrics_enabled:
            shutil.rmtree(os.environ.pop("PROMETHEUS_MULTIPROC_DIR", ""), ignore_errors=True)


def _serve(
    settings: Settings,
    host: str,
    port: int,
    workers: int,
    level: LogLevel,
    access_log: bool,
    logs: dict[str, Any],
) -> None:
    import uvicorn

    from .api.protocol import http_protocol

    migrate(settings)
    if not settings.has_configured_key:
        settings.signing_secret()  # create the shared development secret before workers start
        log.warning(
            "no JWT key configured: running with a development key from %s, on loopback only; "
            "set REWARDPOINTS_JWT_SECRET, REWARDPOINTS_JWT_PUBLIC_KEY or "
            "REWARDPOINTS_JWT_JWKS_URL in production",
            settings.dev_secret_file,
        )
    if workers > 1 and os.environ.get(WORKER_CLUSTER_USERS):
        target = "rewardpoints.cli:create_worker_app"
    else:
        target = "rewardpoints.app:create_app"
    uvicorn.run(
        target,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=level.value,
        log_config=logs,
        access_log=access_log,
        proxy_headers=True,
        http=http_protocol(settings),
    )


def create_worker_app() -> FastAPI:
    """The app of one of uvicorn's workers, which uses the embedded cluster as well."""
    from .app import create_app
    from .embedded import join_as_worker

    join_as_worker(Path(os.environ[WORKER_CLUSTER_USERS]))
    return create_app()


# ---- migrate ----------------------------------------------------------------------------

SqlOption = Annotated[
    bool,
    typer.Option("--sql", help="Print the SQL instead of running it (Alembic's offline mode)."),
]


def _alembic(level: LogLevel, verb: str, *args: object, **kwargs: object) -> None:
    """Run one of Alembic's commands on the configured (or embedded) database."""
    from alembic import command

    settings = load_settings()
    _configure_logging(level, settings)
    run = getattr(command, verb)
    with (
        failures(level),
        database(settings) as settings,
        unreachable_database_as_failure(settings),
    ):
        run(alembic_config(settings), *args, **kwargs)


LevelOption = Annotated[LogLevel, typer.Option(help="Least severe level logged.")]


@migrate_app.callback(invoke_without_command=True)
def _migrate(ctx: typer.Context, log_level: LevelOption = LogLevel.info) -> None:
    if ctx.invoked_subcommand is None:
        _alembic(log_level, "upgrade", "head")


@migrate_app.command()
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    sql: SqlOption = False,
    log_level: LevelOption = LogLevel.info,
) -> None:
    """Upgrade the schema to REVISION (default: the newest)."""
    _alembic(log_level, "upgrade", revision, sql=sql)


# "-1" (one step back) is a revision, not an unknown option.
@migrate_app.command(context_settings={"ignore_unknown_options": True})
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision, e.g. 0010 or -1.")],
    sql: SqlOption = False,
    log_level: LevelOption = LogLevel.info,
) -> None:
    """Downgrade the schema to REVISION. Stop the service first: older code is needed."""
    if sql and ":" not in revision:
        fail("downgrade --sql needs a range, e.g. 0011:0010", CONFIGURATION_ERROR)
    _alembic(log_level, "downgrade", revision, sql=sql)


@migrate_app.command()
def current(log_level: LevelOption = LogLevel.info) -> None:
    """Print the database's schema revision."""
    _alembic(log_level, "current", verbose=False)


@migrate_app.command()
def history(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show each revision's text.")
    ] = False,
) -> None:
    """List the migrations, newest first (needs no database)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    command.history(config, verbose=verbose)


# ---- export and import ------------------------------------------------------------------

TenantOption = Annotated[str, typer.Option(help="The tenant: lowercase, 3-16 characters.")]


def _tenant(tenant: str) -> str:
    from .auth import is_valid_tenant

    if not is_valid_tenant(tenant):
        fail(
            f"invalid tenant {tenant!r} (--tenant): lowercase, 3-16 characters", CONFIGURATION_ERROR
        )
    return tenant


@app.command("export")
def export_(
    tenant: TenantOption,
    form: Annotated[
        Format,
        typer.Option(
            "--format",
            help="json: the summaryBatch answer, byte for byte; ndjson: one document a line.",
        ),
    ] = Format.json,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="The file to write; standard output if not given."),
    ] = None,
    log_level: LevelOption = LogLevel.info,
) -> None:
    """Write every customer of TENANT as summaryBatch documents, as of one moment.

    A file is written beside its name first and renamed when complete, so an interrupted
    export never leaves a file that looks whole."""
    import asyncio

    _tenant(tenant)
    settings = load_settings()
    _configure_logging(log_level, settings)
    with (
        failures(level=log_level),
        database(settings) as settings,
        unreachable_database_as_failure(settings),
    ):
        if output is None:
            count = asyncio.run(_export(settings, tenant, form, sys.stdout.buffer))
        else:
            partial = output.with_name(output.name + ".partial")
            try:
                with partial.open("wb") as out:
                    count = asyncio.run(_export(settings, tenant, form, out))
            except OSError as error:
                raise Failure(f"--output {output}: {error.strerror or error}") from error
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            partial.replace(output)
    print(f"exported {count} customers of {tenant}", file=sys.stderr)


async def _export(settings: Settings, tenant: str, form: Format, out: BinaryIO) -> int:
    from .db import create_engine
    from .documents import Documents
    from .transfer import export_tenant

    engine = create_engine(settings)
    try:
        docs = Documents.configured(engine, settings)
        return await export_tenant(docs, tenant, out, ndjson=form is Format.ndjson)
    finally:
        await engine.dispose()


@app.command("import")
def import_(
    source: Annotated[
        str,
        typer.Argument(
            metavar="FILE",
            help="A summaryBatch answer (a JSON array) or one document a line; - reads "
            "standard input.",
        ),
    ],
    tenant: TenantOption,
    log_level: LevelOption = LogLevel.info,
) -> None:
    """Load summaryBatch documents (Emporix's, or this service's export) into TENANT.

    Each customer is loaded whole, with its entries' ids, times, usedPoints and usedWith. A
    customer already present is left as it is, so running the same import again, or again
    after it was interrupted, adds nothing twice. Each record that cannot be loaded is
    refused with a line saying why; the others are loaded, and the exit code is then 1."""
    import asyncio

    from .transfer import Imported

    _tenant(tenant)
    settings = load_settings()
    _configure_logging(log_level, settings)
    try:
        stream = sys.stdin.buffer if source == "-" else open(source, "rb")  # noqa: SIM115
    except OSError as error:
        fail(f"{source}: {error.strerror or error}", START_UP_ERROR)
    done = Imported()
    try:
        with (
            stream,
            failures(level=log_level),
            database(settings) as settings,
            unreachable_database_as_failure(settings),
        ):
            migrate(settings)
            size = os.fstat(stream.fileno()).st_size if stream.seekable() else None
            asyncio.run(_import(settings, tenant, stream, size or None, done))
    except KeyboardInterrupt:
        print(
            f"interrupted: {done.customers} customers were loaded and are kept; run the same "
            "import again to load the rest",
            file=sys.stderr,
        )
        raise typer.Exit(130) from None
    print(
        f"imported {done.customers} customers of {tenant} ({done.lots} lots, "
        f"{done.redemptions} redemptions); {done.present} already present, left as they were; "
        f"{done.refused} records refused",
        file=sys.stderr,
    )
    if done.refused:
        raise typer.Exit(START_UP_ERROR)


async def _import(
    settings: Settings, tenant: str, stream: BinaryIO, size: int | None, done: Imported
) -> None:
    from .db import create_engine
    from .transfer import Unreadable, import_tenant

    engine = create_engine(settings)
    try:
        await import_tenant(engine, tenant, stream, size=size, refused=sys.stderr, done=done)
    except Unreadable as error:
        raise Failure(
            f"{error}; the {done.customers} customers before it are loaded and kept"
        ) from error
    finally:
        await engine.dispose()


# ---- token ------------------------------------------------------------------------------

DEFAULT_SCOPES = "rewardspoints.rewardpoints_view rewardspoints.rewardpoints_manage"


@app.command()
def token(
    tenant: Annotated[str, typer.Option(help="The tenant: lowercase, 3-16 characters.")],
    scope: Annotated[str, typer.Option(help="Space-separated scopes.")] = DEFAULT_SCOPES,
    customer: Annotated[
        str | None, typer.Option(help="Make a signed-in customer's token for this id.")
    ] = None,
    ttl: Annotated[int, typer.Option(min=1, help="Lifetime in seconds.")] = 3600,
) -> None:
    """Print a token signed with REWARDPOINTS_JWT_SECRET, or the development key."""
    from .auth import mint_token

    settings = load_settings()
    secret = settings.signing_secret()
    if secret is None:
        fail(
            "rewardpoints token signs with REWARDPOINTS_JWT_SECRET (HS256); "
            "none is configured while a public key or JWKS URL is",
            CONFIGURATION_ERROR,
        )
    _tenant(tenant)
    print(
        mint_token(
            secret,
            tenant=tenant,
            scopes=scope.split(),
            customer_id=customer,
            ttl_seconds=ttl,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
    )


def main(argv: list[str] | None = None) -> int:
    """The console script: the exit code of the command (usage errors: Click's message, 2)."""
    try:
        app(args=argv, prog_name="rewardpoints")
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        print(done.code, file=sys.stderr)
        return 1
    return 0


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
