"""The embedded PostgreSQL default, as an operator meets it: ``rewardpoints serve`` and
``migrate`` with no database URL, in child processes, on a data directory of their own.

One cluster is made once per module by ``rewardpoints migrate`` (initdb takes seconds); each
test works on a copy of it (``cp -a``: as root the files belong to the wheel's system user).
The clusters live outside pytest's temporary tree, which another pytest session of the same
user may prune (it keeps its last three) or make private again (mode 0700) while they run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from rewardpoints.auth import mint_token
from rewardpoints.cli import migrations_dir
from rewardpoints.embedded import embedded_cluster

from .support import free_port

pytestmark = pytest.mark.slow

COMMAND = Path(sys.executable).with_name("rewardpoints")
SECRET = "embedded-test-secret-0123456789-abcdefghijklmnop"
TOKEN = mint_token(
    SECRET,
    tenant="acme",
    scopes=["rewardspoints.rewardpoints_view", "rewardspoints.rewardpoints_manage"],
    ttl_seconds=3600,
)
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
SETTING = "REWARDPOINTS_DATA_DIR"


def clean_env(home: Path, data_dir: Path) -> dict[str, str]:
    """No REWARDPOINTS_DATABASE_URL: the embedded default. Nothing inherited from the caller."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "REWARDPOINTS_DATA_DIR": str(data_dir),
        "REWARDPOINTS_JWT_SECRET": SECRET,
    }


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(COMMAND), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def postmasters(pgdata: Path) -> list[int]:
    """The live postmasters serving ``pgdata`` (their command line names it; backends' do not)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"/postgres") and str(pgdata).encode() in argv:
            found.append(int(entry.name))
    return found


def until_no_postmaster(pgdata: Path, *servers: Serve) -> None:
    """``pg_ctl stop -w`` returns once postmaster.pid is gone; the process ends just after."""
    deadline = time.monotonic() + 10
    while postmasters(pgdata):
        outputs = "\n".join(server.output() for server in servers)
        assert time.monotonic() < deadline, f"a postmaster still serves {pgdata}:\n{outputs}"
        time.sleep(0.05)
    assert not (pgdata / "postmaster.pid").exists()


@dataclass
class Serve:
    base: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=30)

    def ctrl_c(self) -> int:
        """SIGINT to the whole process group, as Ctrl-C in a terminal sends it."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout=30)


@contextlib.contextmanager
def serve(env: dict[str, str], cwd: Path, *, workers: int = 1) -> Iterator[Serve]:
    """``rewardpoints serve`` in a child process, once ``/health/ready`` answers 200; a server
    the test has not stopped is stopped with SIGTERM (and SIGKILL if that does not do)."""
    port = free_port()
    log = cwd / f"serve-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(COMMAND), "serve", "--port", str(port), "--workers", str(workers)],
            env=env,
            cwd=cwd,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as in a terminal
        )
    server = Serve(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"serve exited:\n{server.output()}"
            try:
                if httpx.get(f"{server.base}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"serve not ready:\n{server.output()}"
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def add_points(base: str, customer: str, points: int) -> None:
    answer = httpx.post(
        f"{base}/reward-points/customer/{customer}/addPoints",
        json={"points": points},
        headers=HEADERS,
        timeout=10,
    )
    assert answer.status_code == 201, answer.text


def balance(base: str, customer: str) -> int:
    answer = httpx.get(f"{base}/reward-points/customer/{customer}", headers=HEADERS, timeout=10)
    assert answer.status_code == 200, answer.text
    value = answer.json()
    assert isinstance(value, int)
    return value


@dataclass
class Template:
    data_dir: Path
    migrate: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def clusters() -> Iterator[Path]:
    """Where this module's data directories go; removed at the end, after shutting down (with
    SIGINT: PostgreSQL's fast shutdown) any postmaster a failing test left behind."""
    directory = Path(tempfile.mkdtemp(prefix="rewardpoints-embedded-"))
    yield directory
    for pgdata in directory.glob("*/data/pgdata"):
        for pid in postmasters(pgdata):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGINT)
        until_no_postmaster(pgdata)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def template(clusters: Path) -> Template:
    """A data directory made by ``rewardpoints migrate`` with no database URL."""
    home = clusters / "template"
    home.mkdir()
    data_dir = home / "data"
    result = run(["migrate"], clean_env(home, data_dir), home)
    return Template(data_dir, result)


@dataclass
class Workspace:
    home: Path
    data_dir: Path
    pgdata: Path
    env: dict[str, str]


@pytest.fixture
def workspace(template: Template, clusters: Path) -> Workspace:
    """A copy of the template's cluster, stopped, in a directory of this test's own."""
    assert template.migrate.returncode == 0, template.migrate.stderr
    home = Path(tempfile.mkdtemp(dir=clusters))
    data_dir = home / "data"
    subprocess.run(["cp", "-a", str(template.data_dir), str(data_dir)], check=True)
    return Workspace(home, data_dir, data_dir / "pgdata", clean_env(home, data_dir))


def head_revision() -> str:
    head = ScriptDirectory(str(migrations_dir())).get_current_head()
    assert head is not None
    return head


async def schema_version(url: str) -> list[str]:
    parsed = make_url(url)
    conn = await asyncpg.connect(
        host=parsed.query["host"], user=parsed.username, database=parsed.database
    )
    try:
        return [row[0] for row in await conn.fetch("SELECT version_num FROM alembic_version")]
    finally:
        await conn.close()


# ---- migrate ------------------------------------------------------------------------------


def test_migrate_without_a_url_makes_the_cluster_applies_the_schema_and_stops_it(
    template: Template,
) -> None:
    assert template.migrate.returncode == 0, template.migrate.stderr
    pgdata = template.data_dir / "pgdata"
    assert (pgdata / "PG_VERSION").read_text().strip() == "18"
    assert f"embedded PostgreSQL in {template.data_dir}" in template.migrate.stderr
    assert postmasters(pgdata) == []
    assert not (pgdata / "postmaster.pid").exists()
    if os.geteuid() == 0:  # PostgreSQL runs as the wheel's system user; its files are private
        assert pgdata.owner() == "pgserver"
    assert pgdata.stat().st_mode & 0o077 == 0

    # Started again (here in this process), the cluster holds the migrated schema.
    with embedded_cluster(template.data_dir) as url:
        assert url.startswith("postgresql+asyncpg://postgres@/rewardpoints?host=/")
        assert make_url(url).query["host"] == str(pgdata)
        assert asyncio.run(schema_version(url)) == [head_revision()]
        assert len(postmasters(pgdata)) == 1
    until_no_postmaster(pgdata)


# ---- serve --------------------------------------------------------------------------------


def test_serve_keeps_the_data_and_stops_the_cluster_on_sigterm_and_ctrl_c(
    workspace: Workspace,
) -> None:
    with serve(workspace.env, workspace.home) as server:
        add_points(server.base, "c1", 10)
        assert balance(server.base, "c1") == 10
        assert len(postmasters(workspace.pgdata)) == 1
        assert server.stop(signal.SIGTERM) == 128 + signal.SIGTERM
    assert "Traceback" not in server.output()
    until_no_postmaster(workspace.pgdata, server)

    with serve(workspace.env, workspace.home) as server:
        assert balance(server.base, "c1") == 10
        add_points(server.base, "c1", 5)
        # Out of the terminal's reach: Ctrl-C there must not stop a cluster others may share.
        [postmaster] = postmasters(workspace.pgdata)
        assert os.getsid(postmaster) != os.getsid(server.process.pid)
        server.ctrl_c()
    assert "Traceback" not in server.output()
    until_no_postmaster(workspace.pgdata, server)

    with serve(workspace.env, workspace.home) as server:
        assert balance(server.base, "c1") == 15


def test_serve_with_two_workers_shares_one_cluster_and_stops_it_on_sigterm(
    workspace: Workspace,
) -> None:
    with serve(workspace.env, workspace.home, workers=2) as server:
        for n in range(6):  # enough requests for both workers to answer some
            add_points(server.base, "c1", 1 + n)
        assert balance(server.base, "c1") == 21
        assert len(postmasters(workspace.pgdata)) == 1
        server.stop(signal.SIGTERM)
    assert "Traceback" not in server.output()
    until_no_postmaster(workspace.pgdata, server)

    with serve(workspace.env, workspace.home, workers=2) as server:
        assert balance(server.base, "c1") == 21
    until_no_postmaster(workspace.pgdata, server)


def test_a_cluster_left_by_a_killed_serve_is_adopted_with_its_data(
    workspace: Workspace,
) -> None:
    with serve(workspace.env, workspace.home) as server:
        add_points(server.base, "c1", 10)
        [postmaster] = postmasters(workspace.pgdata)
        server.process.kill()
        server.process.wait()
    assert postmasters(workspace.pgdata) == [postmaster]  # SIGKILL leaves it running

    with serve(workspace.env, workspace.home) as server:
        assert postmasters(workspace.pgdata) == [postmaster]  # adopted, not started anew
        assert balance(server.base, "c1") == 10
        add_points(server.base, "c1", 1)
        server.stop()
    until_no_postmaster(workspace.pgdata, server)  # the adopter was the last user: it stopped it

    with serve(workspace.env, workspace.home) as server:
        assert balance(server.base, "c1") == 11
    until_no_postmaster(workspace.pgdata, server)


def uvicorn_workers(supervisor: int) -> list[int]:
    """The worker processes that uvicorn's supervisor spawned (not its resource tracker)."""
    workers: list[int] = []
    for children in Path(f"/proc/{supervisor}/task").glob("*/children"):
        for pid in children.read_text().split():
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                    workers.append(int(pid))
    return workers


def test_workers_left_by_a_killed_supervisor_keep_the_cluster_running(
    workspace: Workspace,
) -> None:
    with serve(workspace.env, workspace.home, workers=2) as server:
        add_points(server.base, "c1", 10)
        workers = uvicorn_workers(server.process.pid)
        assert len(workers) == 2
        [postmaster] = postmasters(workspace.pgdata)
        server.process.kill()
        server.process.wait()
    try:
        # uvicorn's workers outlive their supervisor and go on serving; another process
        # using the cluster meanwhile must not stop it under them on its way out.
        migrated = run(["migrate"], workspace.env, workspace.home)
        assert migrated.returncode == 0, migrated.stderr
        assert postmasters(workspace.pgdata) == [postmaster]
        assert balance(server.base, "c1") == 10
    finally:
        for pid in workers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    with serve(workspace.env, workspace.home) as adopter:
        assert postmasters(workspace.pgdata) == [postmaster]
        assert balance(adopter.base, "c1") == 10
    until_no_postmaster(workspace.pgdata, adopter)


def test_two_serves_share_the_cluster_and_the_last_one_stops_it(workspace: Workspace) -> None:
    with (
        serve(workspace.env, workspace.home) as first,
        serve(workspace.env, workspace.home) as second,
    ):
        [postmaster] = postmasters(workspace.pgdata)
        add_points(first.base, "c1", 10)
        assert balance(second.base, "c1") == 10

        assert first.stop() == 128 + signal.SIGTERM, first.output()
        assert postmasters(workspace.pgdata) == [postmaster]
        add_points(second.base, "c1", 5)
        assert balance(second.base, "c1") == 15

        assert second.stop() == 128 + signal.SIGTERM, second.output()
        until_no_postmaster(workspace.pgdata, first, second)


# ---- bad input ----------------------------------------------------------------------------


def assert_one_line_error(result: subprocess.CompletedProcess[str], data_dir: Path) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{SETTING}={data_dir}" in lines[0]
    return lines[0]


def test_a_data_directory_that_cannot_be_created_is_one_line_naming_the_setting(
    tmp_path: Path,
) -> None:
    regular_file = tmp_path / "a-file"
    regular_file.write_text("not a directory")
    # Permission bits do not stop root: a path under a regular file, or under /proc, does.
    for data_dir in (regular_file / "data", Path("/proc/rewardpoints-test/data")):
        result = run(["serve", "--port", str(free_port())], clean_env(tmp_path, data_dir), tmp_path)

        line = assert_one_line_error(result, data_dir)
        assert "cannot create or write the data directory" in line
    assert regular_file.read_text() == "not a directory"


def test_a_cluster_of_another_postgresql_version_is_refused_and_left_alone(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "pgdata").mkdir(parents=True)
    (data_dir / "pgdata" / "PG_VERSION").write_text("15\n")

    result = run(["serve", "--port", str(free_port())], clean_env(tmp_path, data_dir), tmp_path)

    line = assert_one_line_error(result, data_dir)
    assert "PostgreSQL 15" in line
    assert "18" in line
    assert sorted(p.name for p in (data_dir / "pgdata").iterdir()) == ["PG_VERSION"]


def test_a_socket_path_in_use_by_another_process_is_refused(workspace: Workspace) -> None:
    socket_path = workspace.pgdata / ".s.PGSQL.5432"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as squatter:
        squatter.bind(str(socket_path))
        squatter.listen()

        result = run(["migrate"], workspace.env, workspace.home)

        line = assert_one_line_error(result, workspace.data_dir)
        assert str(socket_path) in line
        assert "in use" in line
        assert socket_path.is_socket()  # not taken over
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(socket_path))
    assert postmasters(workspace.pgdata) == []


def test_token_needs_no_database(tmp_path: Path) -> None:
    unusable = Path("/proc/rewardpoints-test/data")

    result = run(["token", "--tenant", "acme"], clean_env(tmp_path, unusable), tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.count(".") == 2  # a JWT
