"""Helpers shared by the tests: a controllable clock, a throwaway PostgreSQL, a real server, a
tenant loaded in bulk."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx


class FakeClock:
    """The tests' clock, which the database functions read instead of their own (db.py). Each
    reading moves it on by ``step`` (one millisecond unless told), so entries written one after
    another get distinct, increasing ``createdAt`` values, as on a real clock; with no step it
    stays where the test puts it."""

    def __init__(
        self, start: datetime | None = None, step: timedelta = timedelta(milliseconds=1)
    ) -> None:
        self.now = start or datetime.now(UTC).replace(microsecond=0)
        self.step = step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def start_throwaway_postgres() -> Iterator[str]:
    """initdb + pg_ctl from the local PostgreSQL binaries, on a free loopback port."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    pg_ctl = candidates[-1] if candidates else shutil.which("pg_ctl")
    if pg_ctl is None:
        raise RuntimeError("no PostgreSQL binaries found to start a throwaway server")
    bindir = Path(pg_ctl).parent
    # Outside pytest's private temp tree: the server may run as another user.
    directory = Path(tempfile.mkdtemp(prefix="rewardpoints-pg-"))
    data = directory / "data"
    port = free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(directory, "postgres")
    try:
        subprocess.run(
            [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *as_user,
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                f"-p {port} -k {directory} -c listen_addresses=127.0.0.1",
                "-w",
                "-l",
                str(directory / "log"),
                "start",
            ],
            check=True,
            capture_output=True,
        )
        try:
            yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                check=False,
                capture_output=True,
            )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def running_server(
    env: dict[str, str], *, workers: int = 1, timeout: float = 30.0
) -> Iterator[str]:
    """``rewardpoints serve`` in a child process; yields its base URL once it is ready."""
    port = free_port()
    # The server sees only the settings the test gives it: none of the developer's
    # REWARDPOINTS_* variables, and no .env file (it runs in an empty directory).
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("REWARDPOINTS_")}
    full_env = {**inherited, **env}
    workdir = tempfile.mkdtemp(prefix="rewardpoints-server-")
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed when the server stops
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rewardpoints",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env=full_env,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                log.seek(0)
                output = log.read().decode(errors="replace")
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
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


# ---- fault injection: a server whose processes the test can signal -------------------------


class ServerProcess:
    """A running ``rewardpoints serve``: its base URL, its process, and its worker processes."""

    def __init__(self, base: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.base = base
        self.process = process
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """The uvicorn worker processes (children of the supervisor); empty with one worker,
        where the server process itself serves."""
        return [pid for pid in child_pids(self.pid) if _is_uvicorn_worker(pid)]

    def output(self) -> str:
        """What the server has written to stdout and stderr so far."""
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole server, as a crash would."""
        self.process.kill()
        self.process.wait()


def child_pids(pid: int) -> list[int]:
    """The live child processes of ``pid``, from /proc."""
    children: list[int] = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        with contextlib.suppress(OSError):
            children += [int(child) for child in Path(path).read_text().split()]
    return children


def _is_uvicorn_worker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    # Spawned multiprocessing children, not the resource tracker; zombies are dead workers.
    return b"spawn_main" in cmdline and b"resource_tracker" not in cmdline and state != "Z"


def socket_owner(local_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` owns the loopback TCP socket whose local port is ``local_port``."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                    inodes.add(fields[9])
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        return pid
    return None


@contextlib.contextmanager
def server_process(
    env: dict[str, str],
    *,
    workers: int = 1,
    timeout: float = 30.0,
    args: tuple[str, ...] = (),
) -> Iterator[ServerProcess]:
    """Like ``running_server``, but yields the process too, so a test can kill, stop or
    restart it; a server the test already killed is simply reaped. ``args`` are added to
    ``serve``'s (an option given again wins)."""
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("REWARDPOINTS_")}
    workdir = tempfile.mkdtemp(prefix="rewardpoints-server-")
    log_path = Path(workdir) / "server.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rewardpoints",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--no-access-log",
            "--log-level",
            "warning",
            *args,  # later options win
        ],
        env={**inherited, **env},
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.output()}")
            try:
                ready = httpx.get(f"{server.base}/health/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready and len(server.worker_pids()) >= (workers if workers > 1 else 0):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not become ready:\n{server.output()}")
            time.sleep(0.2)
        yield server
    finally:
        import signal

        for pid in server.worker_pids():  # a worker the test stopped must hear SIGTERM
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


class HangUpHoldingProxy:
    """A TCP proxy to PostgreSQL that passes every byte on at once but, on the connections it
    is told to (``hold_hang_ups``), keeps the client's side open when the server hangs up,
    until the client closes it: the client reads the server's last message (a terminated
    backend's goodbye) and not the connection's end, until it writes again. A client's event
    loop can see the same for a moment without a proxy, when it reads the two apart; here the
    moment lasts until the client next uses the connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        # Its own ports towards the server (pg_stat_activity.client_port), while connected;
        # those whose hang-up it holds back, and those of them the server hung up.
        self.server_side_ports: set[int] = set()
        self.holding: set[int] = set()
        self.hung_up: set[int] = set()
        self._listener: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[Any]] = set()

    def hold_hang_ups(self, server_side_ports: set[int]) -> None:
        self.holding |= server_side_ports

    async def start(self, database_url: str) -> str:
        """Listen on a free loopback port; returns ``database_url`` through the proxy."""
        from sqlalchemy.engine import make_url

        self._listener = await asyncio.start_server(self._session, "127.0.0.1", 0)
        port = self._listener.sockets[0].getsockname()[1]
        url = make_url(database_url).set(host="127.0.0.1", port=port)
        return url.render_as_string(hide_password=False)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for session in list(self._sessions):
            session.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)

    async def _session(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            server_reader, server_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            client_writer.close()
            self._sessions.discard(task)
            return
        port = int(server_writer.get_extra_info("sockname")[1])
        self.server_side_ports.add(port)

        async def from_server() -> None:
            await _pump(server_reader, client_writer)
            if port in self.holding:
                self.hung_up.add(port)  # and the client is not told
            else:
                client_writer.close()

        forwarding = asyncio.create_task(from_server())
        try:
            # Until the client closes its side, or writes to a server that hung up: then it is
            # told, as it would be by the server's host.
            with contextlib.suppress(OSError):
                while (data := await client_reader.read(65536)) and port not in self.hung_up:
                    server_writer.write(data)
                    await server_writer.drain()
        finally:
            self.server_side_ports.discard(port)
            forwarding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forwarding
            for writer in (server_writer, client_writer):
                writer.close()
            self._sessions.discard(task)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


@contextlib.asynccontextmanager
async def hang_up_holding_proxy(database_url: str) -> AsyncIterator[tuple[str, HangUpHoldingProxy]]:
    """A ``HangUpHoldingProxy`` in front of the server of ``database_url``, and that URL
    through it."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    proxy = HangUpHoldingProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = await proxy.start(database_url)
    try:
        yield proxied, proxy
    finally:
        await proxy.close()


def restart_throwaway_postgres(data_directory: str) -> None:
    """``pg_ctl restart -m immediate`` (a crash and recovery) of a server started by
    ``start_throwaway_postgres``; refuses any other data directory."""
    data = Path(data_directory)
    if not data.parent.name.startswith("rewardpoints-pg-"):
        raise RuntimeError(f"{data} is not a throwaway server's data directory")
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    pg_ctl = candidates[-1] if candidates else shutil.which("pg_ctl")
    if pg_ctl is None:
        raise RuntimeError("no pg_ctl found")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(
        [
            *as_user,
            pg_ctl,
            "-D",
            str(data),
            "-m",
            "immediate",
            "-w",
            "-l",
            str(data.parent / "log"),
            "restart",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


async def connect(database_url: str) -> Any:
    """A plain asyncpg connection to the database of a SQLAlchemy URL (the tests' own access)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    return await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, database=url.database
    )


BULK_DESCRIPTION = 'a lot with \\ and " and ü'


async def bulk_load(conn: Any, tenant: str, customers: int) -> None:
    """Customers c00001 .. with two lots each, the first with 40 of its 100 points used by one
    redemption, written with one statement per table in one transaction (an asyncpg
    connection): as an import would, not through the service."""
    now = datetime.now(UTC)
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO accounts SELECT $1, 'c' || lpad(g::text, 5, '0'), $2"
            " FROM generate_series(1, $3) g",
            tenant,
            now,
            customers,
        )
        await conn.execute(
            "INSERT INTO lots (tenant, id, customer_id, description, points, used_points,"
            " created_at, valid_until, all_points_after_creation, request_hash)"
            " SELECT $1, 'l' || g || '-' || k, 'c' || lpad(g::text, 5, '0'), $5, 100,"
            " CASE k WHEN 1 THEN 40 ELSE 0 END, $2::timestamptz + k * interval '1 second',"
            " $3, 100 * k, 'h' FROM generate_series(1, $4) g, generate_series(1, 2) k",
            tenant,
            now - timedelta(days=1),
            now + timedelta(days=365),
            customers,
            BULK_DESCRIPTION,
        )
        await conn.execute(
            "INSERT INTO redemptions (tenant, id, customer_id, description, points,"
            " created_at, all_points_after_creation, request_hash)"
            " SELECT $1, 'r' || g, 'c' || lpad(g::text, 5, '0'), 'spent', 40, $2, 160, 'h'"
            " FROM generate_series(1, $3) g",
            tenant,
            now - timedelta(hours=1),
            customers,
        )
        await conn.execute(
            "INSERT INTO lot_usages (tenant, customer_id, lot_id, redemption_id, points,"
            " created_at) SELECT $1, 'c' || lpad(g::text, 5, '0'), 'l' || g || '-1', 'r' || g,"
            " 40, $2 FROM generate_series(1, $3) g",
            tenant,
            now - timedelta(hours=1),
            customers,
        )


async def busy_connections(pg_url: str) -> list[str]:
    """The service's connections to this database that are not idle."""
    conn = await connect(pg_url)
    try:
        rows = await conn.fetch(
            "SELECT state FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'rewardpoints' AND state <> 'idle'"
        )
        return [row["state"] for row in rows]
    finally:
        await conn.close()


async def until_no_busy_connection(pg_url: str) -> None:
    for _ in range(100):
        if not await busy_connections(pg_url):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still busy: {await busy_connections(pg_url)}")


def hang_up_after_first_bytes(
    base: str, headers: dict[str, str], path: str = "/reward-points/summaryBatch"
) -> bytes:
    """Ask for a streamed answer over a raw socket, read a little of it, and close the socket."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: test\r\n".encode()
            + f"Authorization: {headers['Authorization']}\r\n\r\n".encode()
        )
        received = sock.recv(4096)
        # Close with a reset, as a client that goes away does, not after reading everything.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    return received


async def load_long_history(pg_url: str, tenant: str, lots: int, used: int) -> None:
    """Customer "long": ``lots`` lots of 10 points, one a second; after every 10th of the first
    ``used`` a redemption of 100 spent those 10. Written in bulk, as an import would."""
    start = datetime.now(UTC) - timedelta(days=30)
    conn = await connect(pg_url)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO accounts (tenant, customer_id, created_at) VALUES ($1, 'long', $2)",
                tenant,
                start,
            )
            await conn.execute(
                "INSERT INTO lots (tenant, id, customer_id, description, reference_id, points,"
                " used_points, created_at, valid_until, all_points_after_creation, request_hash)"
                " SELECT $1, 'l' || lpad(g::text, 6, '0'), 'long', $2, 'ref ' || g, 10,"
                " CASE WHEN g <= $5 THEN 10 ELSE 0 END, $3::timestamptz + g * interval '1 second',"
                " $4, 10, 'h' FROM generate_series(1, $6) g",
                tenant,
                BULK_DESCRIPTION,
                start,
                start + timedelta(days=3650),
                used,
                lots,
            )
            await conn.execute(
                "INSERT INTO redemptions (tenant, id, customer_id, description, points,"
                " created_at, all_points_after_creation, request_hash)"
                " SELECT $1, 'r' || lpad(k::text, 6, '0'), 'long', 'spent', 100,"
                " $2::timestamptz + (10 * k) * interval '1 second' + interval '0.5 second', 0, 'h'"
                " FROM generate_series(1, $3) k",
                tenant,
                start,
                used // 10,
            )
            await conn.execute(
                "INSERT INTO lot_usages (tenant, customer_id, lot_id, redemption_id, points,"
                " created_at) SELECT $1, 'long', 'l' || lpad(g::text, 6, '0'),"
                " 'r' || lpad(((g + 9) / 10)::text, 6, '0'), 10, $2 FROM generate_series(1, $3) g",
                tenant,
                start,
                used,
            )
    finally:
        await conn.close()


def stall(
    base: str, headers: dict[str, str], path: str, *, shrink_after_connecting: bool = False
) -> tuple[socket.socket, bytes]:
    """Ask for ``path`` and read no more than the start of the answer: the socket, and what
    was read. Its receive buffer is small from the start, so the window TCP offers is; or,
    ``shrink_after_connecting``, made small only once connected (the window offered first is
    larger than what the client then takes: the stream stops at a less tidy point)."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    if not shrink_after_connecting:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    if shrink_after_connecting:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    request = f"GET {path} HTTP/1.1\r\nHost: test\r\n"
    sock.sendall(f"{request}Authorization: {headers['Authorization']}\r\n\r\n".encode())
    head = sock.recv(1024)
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return sock, head


def wire_timestamp(moment: datetime) -> str:
    """``2023-05-11T18:32:18.591+00:00``: how the service writes a time, computed here
    independently of it."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


async def summary_from_tables(conn: Any, tenant: str, customer_id: str, now: datetime) -> Any:
    """The customer's Emporix summary as the test oracle writes it: read from the ledger's
    tables row by row and written out here in Python, apart from the SQL that writes the
    service's documents. ``now`` is the moment expiry is measured at."""
    from sqlalchemy import text

    params = {"tenant": tenant, "customer": customer_id}
    lot_rows = (
        await conn.execute(
            text(
                "SELECT id, reference_id, description, points, used_points, created_at,"
                " valid_until, all_points_after_creation FROM lots"
                " WHERE tenant = :tenant AND customer_id = :customer ORDER BY created_at, id"
            ),
            params,
        )
    ).all()
    usages = (
        await conn.execute(
            text(
                "SELECT lot_id, redemption_id FROM lot_usages"
                " WHERE tenant = :tenant AND customer_id = :customer"
                " ORDER BY created_at, redemption_id"
            ),
            params,
        )
    ).all()
    redemption_rows = (
        await conn.execute(
            text(
                "SELECT id, description, points - reversed_points AS points, created_at,"
                " all_points_after_creation"
                " FROM redemptions WHERE tenant = :tenant AND customer_id = :customer"
                " ORDER BY created_at, id"
            ),
            params,
        )
    ).all()
    used_with: dict[str, list[str]] = {}
    for lot_id, redemption_id in usages:
        used_with.setdefault(lot_id, []).append(redemption_id)
    added = [
        {
            "id": row.id,
            "reference-id": row.reference_id,
            "description": row.description,
            "points": row.points,
            "createdAt": wire_timestamp(row.created_at),
            "allPointsAfterCreation": row.all_points_after_creation,
            "usedPoints": row.used_points,
            "validUntil": wire_timestamp(row.valid_until),
            "usedWith": used_with.get(row.id, []),
        }
        for row in lot_rows
    ]
    redeemed = [
        {
            "id": row.id,
            "description": row.description,
            "points": row.points,
            "createdAt": wire_timestamp(row.created_at),
            "allPointsAfterCreation": row.all_points_after_creation,
        }
        for row in redemption_rows
    ]
    active = sum(row.points - row.used_points for row in lot_rows if row.valid_until > now)
    return {
        "customerId": customer_id,
        "activePoints": active,
        "summary": {"addedPointsList": added, "redeemedPointsList": redeemed},
    }
