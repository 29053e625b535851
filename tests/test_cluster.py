"""Failure drills on the scaled-out topology that `scripts/cluster up` starts: HAProxy in
front of two service instances, PgBouncer in transaction mode, a primary and a streaming
standby, all real processes on loopback. Honest clients (each write carries its id and is sent
again, unchanged, after any failure) lose and duplicate nothing, and no answer is a 500."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from rewardpoints.auth import mint_token

from .support import connect

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "scripts" / "cluster"
SCOPES = ["rewardspoints.rewardpoints_view", "rewardspoints.rewardpoints_manage"]


@dataclass
class Cluster:
    env: dict[str, str]
    layout: dict[str, Any]
    port: int
    dir: Path

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CLUSTER), command], env=self.env, capture_output=True, text=True, timeout=300
        )

    @property
    def balancer(self) -> str:
        return str(self.layout["balancer"])

    def headers(self, tenant: str) -> dict[str, str]:
        secret = Path(self.layout["secret_file"]).read_text().strip()
        return {"Authorization": f"Bearer {mint_token(secret, tenant=tenant, scopes=SCOPES)}"}

    def url(self, name: str) -> str:
        return str(self.layout[name]).replace("postgresql://", "postgresql+asyncpg://")


def _free_range(size: int) -> int:
    """A base port with the ``size`` ports from it free."""
    for _ in range(50):
        base = 20000 + int.from_bytes(os.urandom(2), "big") % 30000
        ports = range(base, base + size)
        free = True
        for port in ports:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    free = False
                    break
        if free:
            return base
    raise AssertionError("no free range of ports")


def _answering(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    directory = Path(tempfile.mkdtemp(prefix="rp-cluster-"))
    directory.chmod(0o755)
    port = _free_range(20)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REWARDPOINTS_")},
        "CLUSTER_DIR": str(directory),
        "CLUSTER_PORT": str(port),
        "CLUSTER_INSTANCES": "2",
        "CLUSTER_WORKERS": "1",
        "CLUSTER_POOL_SIZE": "8",
    }
    topology = Cluster(env, {}, port, directory)
    try:
        started = topology.run("up")
        assert started.returncode == 0, started.stdout + started.stderr
        topology.layout = json.loads((directory / "layout.json").read_text())
        yield topology
    finally:
        stopped = topology.run("down")
        shutil.rmtree(directory, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not [p for p in range(port, port + 20) if _answering(p)], "down left a port open"


async def honest_writes(
    base: str, headers: dict[str, str], tenant: str, writer: int, count: int, statuses: Counter[int]
) -> None:
    """``count`` additions of ``writer + 1`` points, each with its id, each sent again until it
    is acknowledged (201, or 200 for an id already written with the same content)."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        for n in range(count):
            body = {"points": writer + 1, "id": f"w{writer}-{n}"}
            path = f"/reward-points/customer/c{n % 5}/addPoints"
            for _ in range(200):
                try:
                    answer = await client.post(path, json=body, headers=headers)
                except httpx.TransportError:
                    statuses[0] += 1
                    await asyncio.sleep(0.1)
                    continue
                statuses[answer.status_code] += 1
                if answer.status_code in (200, 201):
                    break
                assert answer.status_code == 503, answer.text
                assert answer.headers.get("Retry-After"), answer.headers
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"{body} never acknowledged")


async def lots_of(cluster: Cluster, tenant: str) -> list[tuple[str, int]]:
    conn = await connect(cluster.url("primary"))
    try:
        rows = await conn.fetch("SELECT id, points FROM lots WHERE tenant = $1 ORDER BY id", tenant)
    finally:
        await conn.close()
    return [(row["id"], row["points"]) for row in rows]


def expected_lots(writers: int, count: int) -> list[tuple[str, int]]:
    return sorted((f"w{w}-{n}", w + 1) for w in range(writers) for n in range(count))


async def balances(cluster: Cluster, tenant: str) -> list[int]:
    async with httpx.AsyncClient(base_url=cluster.balancer, timeout=10) as client:
        answers = [
            await client.get(f"/reward-points/customer/c{n}", headers=cluster.headers(tenant))
            for n in range(5)
        ]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    return [int(a.json()) for a in answers]


def instance_pid(cluster: Cluster, number: int) -> int:
    return int((cluster.dir / f"instance-{number}" / "serve.pid").read_text())


async def test_an_instance_killed_mid_load_loses_and_duplicates_nothing(cluster: Cluster) -> None:
    tenant = "drillkill"
    statuses: Counter[int] = Counter()
    load = asyncio.gather(
        *(
            honest_writes(cluster.balancer, cluster.headers(tenant), tenant, w, 150, statuses)
            for w in range(4)
        )
    )
    await asyncio.sleep(0.5)
    assert not load.done() and sum(statuses.values()) > 0  # in the middle of the load
    os.killpg(instance_pid(cluster, 1), signal.SIGKILL)
    await load
    assert 500 not in statuses, statuses
    assert await lots_of(cluster, tenant) == expected_lots(4, 150)
    # c0 .. c4 each got 30 of every writer's 150 additions.
    assert await balances(cluster, tenant) == [30 * (1 + 2 + 3 + 4)] * 5
    restarted = cluster.run("up")  # the missing instance is started again
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr


async def test_pgbouncer_restarted_mid_load_gives_503s_then_recovers(cluster: Cluster) -> None:
    tenant = "drillpooler"
    statuses: Counter[int] = Counter()
    load = asyncio.gather(
        *(
            honest_writes(cluster.balancer, cluster.headers(tenant), tenant, w, 150, statuses)
            for w in range(4)
        )
    )
    await asyncio.sleep(0.5)
    assert not load.done() and sum(statuses.values()) > 0
    pidfile = cluster.dir / "pgbouncer" / "pgbouncer.pid"
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    await asyncio.sleep(1.5)
    restarted = await asyncio.to_thread(cluster.run, "up")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    await load
    assert 500 not in statuses, statuses
    assert statuses[503] > 0, statuses  # the outage was seen, and answered as such
    assert await lots_of(cluster, tenant) == expected_lots(4, 150)
    assert await balances(cluster, tenant) == [30 * (1 + 2 + 3 + 4)] * 5


async def test_heavy_reads_fall_back_to_the_primary_while_the_replica_is_down(
    cluster: Cluster,
) -> None:
    tenant = "drillreplica"
    headers = cluster.headers(tenant)
    async with httpx.AsyncClient(base_url=cluster.balancer, timeout=30) as client:
        for n in range(3):
            added = await client.post(
                f"/reward-points/customer/r{n}/addPoints", json={"points": 5}, headers=headers
            )
            assert added.status_code == 201

        async def batch() -> httpx.Response:
            answer = await client.get("/reward-points/summaryBatch", headers=headers)
            logs = [p.read_text()[-3000:] for p in cluster.dir.glob("instance-*/serve.log")]
            assert answer.status_code == 200, (answer.text, logs)
            return answer

        # The standby catches up within moments: then the export comes from it.
        deadline = time.monotonic() + 20
        while True:
            fresh = await batch()
            if fresh.headers["X-Read-Source"] == "replica" and len(fresh.json()) == 3:
                break
            assert time.monotonic() < deadline, fresh.headers
            await asyncio.sleep(0.3)
        assert float(fresh.headers["X-Replica-Lag-Seconds"]) <= 10
        heavy = (
            "/reward-points/liability",
            "/reward-points/customer/r0/history",
            "/reward-points/expiringPoints?before=2999-01-01T00:00:00Z",
        )
        on_replica = {}
        for path in heavy:
            answer = await client.get(path, headers=headers)
            assert answer.status_code == 200, answer.text
            assert answer.headers["X-Read-Source"] == "replica", (path, answer.headers)
            on_replica[path] = answer.json()
        metrics = await client.get("/metrics")
        lag = [
            line
            for line in metrics.text.splitlines()
            if line.startswith("rewardpoints_read_replica_lag_seconds")
        ]
        assert lag and float(lag[0].split()[-1]) <= 10, lag

        replica = cluster.dir / "replica"
        stop = await asyncio.to_thread(
            subprocess.run,
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                *pg_ctl(),
                "-D",
                str(replica),
                "-m",
                "fast",
                "-w",
                "stop",
            ]
            if os.geteuid() == 0
            else [*pg_ctl(), "-D", str(replica), "-w", "stop"],
            capture_output=True,
        )
        assert stop.returncode == 0, stop.stderr
        try:
            deadline = time.monotonic() + 20
            while True:
                fallback = await batch()
                if fallback.headers["X-Read-Source"] == "primary":
                    break
                assert time.monotonic() < deadline, fallback.headers
                await asyncio.sleep(0.3)
            assert "X-Replica-Lag-Seconds" not in fallback.headers
            assert fallback.content == fresh.content
            for path in heavy:
                answer = await client.get(path, headers=headers)
                assert answer.status_code == 200, answer.text
                assert answer.headers["X-Read-Source"] == "primary", (path, answer.headers)
                # The same figures; the liability report states its own moment ("at").
                read, before = answer.json(), on_replica[path]
                if isinstance(read, dict):
                    read, before = read | {"at": None}, before | {"at": None}
                assert read == before
        finally:
            restarted = await asyncio.to_thread(cluster.run, "up")
            assert restarted.returncode == 0, restarted.stdout + restarted.stderr


def pg_ctl() -> list[str]:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return [str(versions[-1])]


async def test_promoting_the_standby_serves_every_acknowledged_write(cluster: Cluster) -> None:
    """Planned failover: the primary stopped (it hands its last WAL to the standby first),
    the standby promoted, PgBouncer pointed at it; the service is not restarted."""
    tenant = "drillpromote"
    statuses: Counter[int] = Counter()
    await asyncio.gather(
        *(
            honest_writes(cluster.balancer, cluster.headers(tenant), tenant, w, 20, statuses)
            for w in range(4)
        )
    )
    promoted = await asyncio.to_thread(cluster.run, "promote")
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    # Reads through the service, on the promoted server, retried while PgBouncer reconnects.
    deadline = time.monotonic() + 30
    while True:
        try:
            seen = await balances(cluster, tenant)
            break
        except AssertionError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.5)
    assert seen == [4 * (1 + 2 + 3 + 4)] * 5
    more: Counter[int] = Counter()
    await honest_writes(cluster.balancer, cluster.headers(tenant), tenant, 9, 5, more)
    assert 500 not in statuses and 500 not in more, (statuses, more)
    conn = await connect(cluster.url("replica"))  # the promoted server
    try:
        assert await conn.fetchval("SELECT pg_is_in_recovery()") is False
        count = await conn.fetchval("SELECT count(*) FROM lots WHERE tenant = $1", tenant)
    finally:
        await conn.close()
    assert count == 4 * 20 + 5
