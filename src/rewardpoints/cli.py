"""The ``rewardpoints`` command: serve, migrate, token."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from .config import Settings
from .embedded import EmbeddedClusterError

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("rewardpoints")
# Set by `serve --workers N` on the embedded cluster: the file its workers hold a lock on.
WORKER_CLUSTER_USERS = "REWARDPOINTS_EMBEDDED_CLUSTER_USERS"


def migrations_dir() -> Path:
    """The Alembic scripts: inside the installed package, or beside ``src/`` in a checkout."""
    packaged = Path(__file__).with_name("migrations")
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "migrations"


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


def migrate(settings: Settings) -> None:
    from alembic import command
    from alembic.config import Config

    if settings.database_url is None:
        raise ValueError("migrate needs a database URL; main() starts the embedded cluster")
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["database_url"] = settings.database_url
    command.upgrade(config, "head")


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from .api.protocol import http_protocol

    migrate(settings)
    if not settings.has_configured_key:
        settings.signing_secret()  # create the shared development secret before workers start
        log.warning(
            "no JWT key configured: running with a development key from %s; "
            "set REWARDPOINTS_JWT_SECRET, REWARDPOINTS_JWT_PUBLIC_KEY or "
            "REWARDPOINTS_JWT_JWKS_URL in production",
            settings.dev_secret_file,
        )
    if args.workers > 1 and os.environ.get(WORKER_CLUSTER_USERS):
        app = "rewardpoints.cli:create_worker_app"
    else:
        app = "rewardpoints.app:create_app"
    uvicorn.run(
        app,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=args.access_log,
        proxy_headers=True,
        http=http_protocol(settings),
    )
    return 0


def create_worker_app() -> FastAPI:
    """The app of one of uvicorn's workers, which uses the embedded cluster as well."""
    from .app import create_app
    from .embedded import join_as_worker

    join_as_worker(Path(os.environ[WORKER_CLUSTER_USERS]))
    return create_app()


def _token(args: argparse.Namespace, settings: Settings) -> int:
    from .auth import is_valid_tenant, mint_token

    secret = settings.signing_secret()
    if secret is None:
        print(
            "rewardpoints token signs with REWARDPOINTS_JWT_SECRET (HS256); "
            "none is configured while a public key or JWKS URL is",
            file=sys.stderr,
        )
        return 2
    if not is_valid_tenant(args.tenant):
        print(f"invalid tenant {args.tenant!r}: lowercase, 3-16 characters", file=sys.stderr)
        return 2
    print(
        mint_token(
            secret,
            tenant=args.tenant,
            scopes=args.scope.split(),
            customer_id=args.customer,
            ttl_seconds=args.ttl,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rewardpoints", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="apply pending migrations, then serve the API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True)

    commands.add_parser("migrate", help="apply the database migrations and exit")

    token = commands.add_parser("token", help="print a development token signed with the secret")
    token.add_argument("--tenant", required=True)
    token.add_argument(
        "--scope",
        default="rewardspoints.rewardpoints_view rewardspoints.rewardpoints_manage",
        help="space-separated scopes",
    )
    token.add_argument("--customer", default=None, help="make a signed-in customer's token")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", "info").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO), format="%(levelname)s %(name)s: %(message)s"
    )
    settings = Settings()
    if args.command == "token":
        return _token(args, settings)
    # SIGTERM ends the process the way Ctrl-C does, through the `finally` blocks, so the
    # embedded cluster is stopped also when it comes before or after uvicorn's own handlers.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with database_url(settings) as url:
            # uvicorn's workers build the app from Settings() again: they find the URL here.
            os.environ["REWARDPOINTS_DATABASE_URL"] = url
            settings = settings.model_copy(update={"database_url": url})
            if args.command == "serve":
                return _serve(args, settings)
            migrate(settings)
            return 0
    except EmbeddedClusterError as error:
        print(f"rewardpoints: {error}", file=sys.stderr)
        return 2


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
