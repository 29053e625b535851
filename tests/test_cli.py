"""The ``rewardpoints`` command as an operator runs it: ``migrate``, ``token`` and ``serve`` in
child processes, with an environment built here (nothing inherited from the developer's) and
a working directory of their own (``.env`` is read from there)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from alembic.script import ScriptDirectory
from jose import jwt
from sqlalchemy.engine import make_url

from rewardpoints.cli import migrations_dir
from rewardpoints.models import metadata

from .conftest import TEST_SECRET, bearer
from .support import free_port

COMMAND = Path(sys.executable).with_name("rewardpoints")
DEV_SECRET = Path("rewardpoints") / "dev-secret"


def clean_env(home: Path, **variables: str) -> dict[str, str]:
    """Only what a process needs, plus ``variables``: no REWARDPOINTS_* from the caller."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "LANG": "C.UTF-8",
        **variables,
    }


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(COMMAND), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


async def _execute(url: str, statement: str, *args: Any) -> list[asyncpg.Record]:
    parsed = make_url(url)
    conn = await asyncpg.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username or "postgres",
        password=parsed.password,
        database=parsed.database or "postgres",
        timeout=10,
    )
    try:
        return list(await conn.fetch(statement, *args))
    finally:
        await conn.close()


def query(url: str, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in asyncio.run(_execute(url, statement, *args))]


@contextlib.contextmanager
def empty_database(pg_server_url: str) -> Iterator[str]:
    """A database of its own on the server, with nothing in it yet (not even the schema),
    dropped afterwards."""
    name = f"rp_cli_{os.getpid()}_{secrets.token_hex(4)}"
    query(pg_server_url, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        query(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_db(pg_server_url: str) -> Iterator[str]:
    with empty_database(pg_server_url) as url:
        yield url


def table_names(url: str) -> set[str]:
    rows = query(url, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    return {name for (name,) in rows}


def schema_version(url: str) -> list[str]:
    return [version for (version,) in query(url, "SELECT version_num FROM alembic_version")]


def head_revision() -> str:
    head = ScriptDirectory(str(migrations_dir())).get_current_head()
    assert head is not None
    return head


def claims_of(token: str, secret: str) -> dict[str, object]:
    claims: dict[str, object] = jwt.decode(token, secret, algorithms=["HS256"])
    return claims


# ---- migrate ------------------------------------------------------------------------------


def test_migrate_creates_the_schema_in_an_empty_database(tmp_path: Path, fresh_db: str) -> None:
    assert table_names(fresh_db) == set()
    env = clean_env(tmp_path, REWARDPOINTS_DATABASE_URL=fresh_db)

    result = run(["migrate"], env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert set(metadata.tables) | {"alembic_version"} <= table_names(fresh_db)
    assert schema_version(fresh_db) == [head_revision()]


def test_migrate_twice_is_harmless_and_keeps_the_data(tmp_path: Path, fresh_db: str) -> None:
    env = clean_env(tmp_path, REWARDPOINTS_DATABASE_URL=fresh_db)
    assert run(["migrate"], env, tmp_path).returncode == 0
    query(
        fresh_db,
        "INSERT INTO accounts (tenant, customer_id, created_at) "
        "VALUES ('acme', 'c1', '2030-01-01 00:00:00+00')",
    )
    tables = table_names(fresh_db)

    again = run(["migrate"], env, tmp_path)

    assert again.returncode == 0, again.stderr
    assert table_names(fresh_db) == tables
    assert schema_version(fresh_db) == [head_revision()]
    assert query(fresh_db, "SELECT tenant, customer_id FROM accounts") == [("acme", "c1")]


def test_migrate_verbs_move_the_schema_to_a_revision_and_report_it(
    tmp_path: Path, fresh_db: str
) -> None:
    """Alembic's verbs: upgrade to a revision, current, downgrade, history, and --sql, on a
    plain ``postgresql://`` URL (no driver named: the service's asyncpg)."""
    plain = fresh_db.replace("postgresql+asyncpg://", "postgresql://")
    env = clean_env(tmp_path, REWARDPOINTS_DATABASE_URL=plain)
    head = head_revision()
    script = ScriptDirectory(str(migrations_dir()))
    previous = script.get_revision(head).down_revision
    assert isinstance(previous, str)

    assert run(["migrate", "upgrade", previous], env, tmp_path).returncode == 0
    assert schema_version(fresh_db) == [previous]
    current = run(["migrate", "current"], env, tmp_path)
    assert current.returncode == 0, current.stderr
    assert current.stdout.split()[0] == previous

    offline = run(["migrate", "upgrade", "--sql"], env, tmp_path)
    assert offline.returncode == 0, offline.stderr
    assert "CREATE TABLE outbox" in offline.stdout
    assert schema_version(fresh_db) == [previous]  # printed, not run

    assert run(["migrate", "upgrade"], env, tmp_path).returncode == 0
    assert schema_version(fresh_db) == [head]
    assert run(["migrate", "downgrade", "-1"], env, tmp_path).returncode == 0
    assert schema_version(fresh_db) == [previous]
    assert run(["migrate"], env, tmp_path).returncode == 0  # no verb: upgrade head
    assert schema_version(fresh_db) == [head]

    history = run(["migrate", "history"], clean_env(tmp_path), tmp_path)
    assert history.returncode == 0, history.stderr
    assert f"{previous} -> {head} (head)" in history.stdout


@pytest.mark.parametrize(
    ("variables", "names"),
    [
        ({"REWARDPOINTS_DATABASE_POOL_SIZE": "ten"}, "REWARDPOINTS_DATABASE_POOL_SIZE='ten'"),
        ({"REWARDPOINTS_DATABASE_URL": "mysql://u@h/db"}, "is not PostgreSQL"),
        ({"REWARDPOINTS_DATABASE_URL": "notaurl"}, "not a database URL"),
        (
            {"REWARDPOINTS_DATABASE_URL": "postgresql+psycopg://u@h/db"},
            "driver 'psycopg' is not supported",
        ),
        ({"REWARDPOINTS_JWT_SECRET": "abc"}, "REWARDPOINTS_JWT_SECRET: must be at least 32 bytes"),
        ({"REWARDPOINTS_JWT_PUBLIC_KEY": "/nowhere/key.pem"}, "REWARDPOINTS_JWT_PUBLIC_KEY="),
        (
            {"REWARDPOINTS_CORS_ORIGINS": "https://ok.example.com,shop.example.com"},
            "REWARDPOINTS_CORS_ORIGINS='https://ok.example.com,shop.example.com': "
            "'shop.example.com' is not an origin",
        ),
        (
            {"REWARDPOINTS_CORS_ORIGINS": "https://shop.example.com/"},
            "'https://shop.example.com/' is not an origin",
        ),
        (
            {"REWARDPOINTS_CORS_ORIGINS": "https://shop.example.com/app"},
            "'https://shop.example.com/app' is not an origin",
        ),
        ({"REWARDPOINTS_CORS_ORIGINS": "*,https://shop.example.com"}, "'*' (any origin) stands"),
    ],
)
@pytest.mark.parametrize("command", [["serve"], ["migrate"]])
def test_a_bad_setting_is_one_line_naming_its_variable(
    tmp_path: Path, variables: dict[str, str], names: str, command: list[str]
) -> None:
    result = run(command, clean_env(tmp_path, **variables), tmp_path)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rewardpoints: ")
    assert names in lines[0]
    assert "abc" not in lines[0]  # a secret is never echoed
    assert not (tmp_path / ".rewardpoints").exists()  # nothing was started


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--log-level", "bogus"],
        ["serve", "--port", "0"],
        ["serve", "--workers", "0"],
        ["token", "--tenant", "acme", "--ttl", "-5"],
        ["token", "--tenant", "acme", "--ttl", "0"],
    ],
)
def test_a_bad_option_is_refused_before_any_work(tmp_path: Path, args: list[str]) -> None:
    result = run(args, clean_env(tmp_path, REWARDPOINTS_JWT_SECRET=TEST_SECRET), tmp_path)

    assert result.returncode == 2
    assert result.stdout == ""
    assert "Invalid value for '--" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".rewardpoints").exists()


def test_an_unreachable_database_is_one_line_and_a_traceback_only_at_debug(
    tmp_path: Path,
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    env = clean_env(tmp_path, REWARDPOINTS_DATABASE_URL=url)

    plain = run(["migrate"], env, tmp_path)
    debug = run(["migrate", "--log-level", "debug"], env, tmp_path)

    assert plain.returncode == debug.returncode == 1
    [line] = plain.stderr.strip().splitlines()
    assert line.startswith("rewardpoints: cannot use the database at REWARDPOINTS_DATABASE_URL")
    assert "Traceback" in debug.stderr


def test_serving_beyond_loopback_needs_a_configured_key(tmp_path: Path) -> None:
    result = run(["serve", "--host", "0.0.0.0"], clean_env(tmp_path), tmp_path)  # noqa: S104

    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "no JWT key is configured" in line
    assert not (tmp_path / ".rewardpoints").exists()
    assert not (tmp_path / "config" / DEV_SECRET).exists()


def test_version_and_help_show_the_commands_and_defaults(tmp_path: Path) -> None:
    version = run(["--version"], clean_env(tmp_path), tmp_path)
    assert version.returncode == 0
    assert version.stdout.strip().startswith("rewardpoints ")
    help_text = run(["serve", "--help"], clean_env(tmp_path, COLUMNS="200"), tmp_path)
    assert help_text.returncode == 0
    for shown in ("127.0.0.1", "8000", "critical|error|warning|info|debug|trace"):
        assert shown in help_text.stdout


# ---- token --------------------------------------------------------------------------------


def test_token_prints_a_jwt_with_the_requested_claims(tmp_path: Path) -> None:
    env = clean_env(tmp_path, REWARDPOINTS_JWT_SECRET=TEST_SECRET)
    before = int(time.time())

    result = run(
        ["token", "--tenant", "acme", "--scope", "a b", "--customer", "c1", "--ttl", "60"],
        env,
        tmp_path,
    )

    after = int(time.time())
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = claims_of(token, TEST_SECRET)
    assert claims["tenant"] == "acme"
    assert claims["scope"] == "a b"
    assert claims["customerId"] == "c1"
    assert isinstance(claims["exp"], int)
    assert before + 60 <= claims["exp"] <= after + 60
    # A configured secret is used as it is: no development secret appears.
    assert not (tmp_path / "config" / DEV_SECRET).exists()


@pytest.mark.parametrize("tenant", ["Acme", "ab", "a" * 17, "acme corp"])
def test_token_refuses_an_invalid_tenant(tmp_path: Path, tenant: str) -> None:
    env = clean_env(tmp_path, REWARDPOINTS_JWT_SECRET=TEST_SECRET)

    result = run(["token", "--tenant", tenant], env, tmp_path)

    assert result.returncode == 2
    assert result.stdout == ""
    assert "invalid tenant" in result.stderr


def test_token_without_a_key_creates_a_private_development_secret_and_reuses_it(
    tmp_path: Path,
) -> None:
    env = clean_env(tmp_path)
    secret_file = tmp_path / "config" / DEV_SECRET
    assert not secret_file.exists()

    first = run(["token", "--tenant", "acme"], env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    second = run(["token", "--tenant", "acme"], env, tmp_path)

    assert second.returncode == 0, second.stderr
    assert secret_file.read_text().strip() == secret
    assert len(secret) >= 32
    for result in (first, second):
        assert claims_of(result.stdout.strip(), secret)["tenant"] == "acme"


def test_module_entry_point_prints_help(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rewardpoints", "--help"],
        env=clean_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    for command in ("serve", "migrate", "token"):
        assert command in result.stdout


# ---- serve --------------------------------------------------------------------------------


@dataclass
class Served:
    base: str
    home: Path
    database_url: str
    log: Path
    env: dict[str, str]


@contextlib.contextmanager
def serve(home: Path, env: dict[str, str], timeout: float = 30.0) -> Iterator[str]:
    """``rewardpoints serve`` with exactly ``env``, in ``home``; its output goes to
    ``home/serve.log``. Yields the base URL once ``/health/ready`` answers 200."""
    port = free_port()
    with (home / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            [
                str(COMMAND),
                "serve",
                "--port",
                str(port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=home,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                output = (home / "serve.log").read_text(errors="replace")
                raise RuntimeError(f"server exited with {process.returncode}:\n{output}")
            try:
                if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def served(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the module: no key configured, on a database with no schema yet."""
    home = tmp_path_factory.mktemp("serve")
    with empty_database(pg_server_url) as database_url:
        env = clean_env(home, REWARDPOINTS_DATABASE_URL=database_url)
        assert table_names(database_url) == set()
        with serve(home, env) as base:
            yield Served(base, home, database_url, home / "serve.log", env)


@pytest.mark.slow
def test_serve_applies_pending_migrations_before_serving(served: Served) -> None:
    assert set(metadata.tables) <= table_names(served.database_url)
    assert schema_version(served.database_url) == [head_revision()]
    assert httpx.get(f"{served.base}/health/ready", timeout=10).status_code == 200


@pytest.mark.slow
def test_serve_without_a_key_warns_and_accepts_tokens_from_the_token_command(
    served: Served,
) -> None:
    secret_file = served.home / "config" / DEV_SECRET
    log = served.log.read_text(errors="replace")
    assert "WARNING" in log
    assert "development key" in log
    assert str(secret_file) in log
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600

    printed = run(["token", "--tenant", "acme"], served.env, served.home)
    assert printed.returncode == 0, printed.stderr
    headers = bearer(printed.stdout.strip())
    added = httpx.post(
        f"{served.base}/reward-points/customer/c1/addPoints",
        json={"points": 10},
        headers=headers,
        timeout=10,
    )
    balance = httpx.get(f"{served.base}/reward-points/customer/c1", headers=headers, timeout=10)

    assert added.status_code == 201, added.text
    assert balance.status_code == 200
    assert balance.json() == 10
    # The server checks signatures: the same claims signed with another secret are refused.
    forged = jwt.encode(
        claims_of(printed.stdout.strip(), secret_file.read_text().strip()),
        TEST_SECRET,
        algorithm="HS256",
    )
    refused = httpx.get(
        f"{served.base}/reward-points/customer/c1", headers=bearer(forged), timeout=10
    )
    assert refused.status_code == 401
