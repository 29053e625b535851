"""Helpers shared by the tests: a controllable clock, a throwaway PostgreSQL, a real server."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx


class FakeClock:
    """The ledger's clock. Each reading moves it on by one millisecond, so entries written
    one after another get distinct, increasing ``createdAt`` values, as on a real clock."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
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
    log = tempfile.TemporaryFile()
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
