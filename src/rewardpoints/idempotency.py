"""Idempotency keys with Stripe's semantics, stored in the same transaction as the write.

A request with an ``Idempotency-Key`` header is answered once; its first response (status and
body) is kept per tenant and key for ``ttl`` and replayed to every later request with the same
key and the same content. The record is written by a transaction hook inside the command's own
transaction, so a crash can never separate the write from the record of its answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, literal_column, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from .db import database_clock, read_transaction, write_transaction
from .errors import IdempotencyKeyInProgress, IdempotencyKeyReused
from .models import idempotency_keys


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: bytes
    media_type: str | None


@dataclass(frozen=True, slots=True)
class KeyClaim:
    """A request's Idempotency-Key: the tenant's key and the fingerprint of its content."""

    tenant: str
    key: str
    request_hash: str


class Replayed(Exception):  # noqa: N818 - control flow, not an error
    """The key was answered before: carries the stored response."""

    def __init__(self, stored: StoredResponse) -> None:
        super().__init__(stored.status)
        self.stored = stored


def fingerprint(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


# The expiry of a key claimed until its answer is known (claim_pending).
NEVER: ColumnElement[Any] = literal_column("'infinity'::timestamptz")


def _lock_id(tenant: str, key: str) -> int:
    raw = hashlib.sha256(f"{tenant}\x00{key}".encode()).digest()[:8]
    return int.from_bytes(raw, "big", signed=True)


class IdempotencyStore:
    def __init__(self, engine: AsyncEngine, ttl: timedelta) -> None:
        self.engine = engine
        self.ttl = ttl

    async def lookup(self, tenant: str, key: str, request_hash: str) -> StoredResponse | None:
        """The stored answer for this key, or None; IdempotencyKeyReused for other content."""
        async with read_transaction(self.engine) as conn:
            return await self._stored(conn, tenant, key, request_hash)

    async def claim(self, conn: AsyncConnection, tenant: str, key: str, request_hash: str) -> None:
        """Inside the write transaction, before the write: nobody else runs this key now,
        and it has not been answered (else Replayed / IdempotencyKeyReused)."""
        # Held until this transaction ends; another worker with the same key gets 409.
        got = await conn.scalar(select(func.pg_try_advisory_xact_lock(_lock_id(tenant, key))))
        if not got:
            raise IdempotencyKeyInProgress(key)
        stored = await self._stored(conn, tenant, key, request_hash)
        if stored is not None:
            raise Replayed(stored)

    async def claim_pending(self, conn: AsyncConnection, claim: KeyClaim) -> None:
        """Inside the write transaction, before the write: claim the key until its answer is
        known, for commands whose answer comes after the transaction (``answer`` gives it).

        The claim commits with the write, so from then on every request with this key, in
        any process, is told the request is in progress, until the answer is recorded and
        replayed. Two claims at once: the second waits for the first's transaction and then
        sees its claim (IdempotencyKeyInProgress), or claims the key if it was rolled back.
        The claim does not expire (nor is it pruned) however long the answer takes: the key's
        time to live starts with its answer, so the key is never claimed again meanwhile.
        """
        now = database_clock()
        values: dict[str, Any] = {
            "tenant": claim.tenant,
            "key": claim.key,
            "request_hash": claim.request_hash,
            "status": None,
            "body": None,
            "media_type": None,
            "created_at": now,
            "expires_at": NEVER,
        }
        insert = postgresql.insert(idempotency_keys).values(**values)
        statement = insert.on_conflict_do_update(
            index_elements=[idempotency_keys.c.tenant, idempotency_keys.c.key],
            set_={name: insert.excluded[name] for name in values if name not in ("tenant", "key")},
            where=idempotency_keys.c.expires_at <= now,
        ).returning(idempotency_keys.c.key)
        if (await conn.execute(statement)).first() is not None:
            return
        stored = await self._stored(conn, claim.tenant, claim.key, claim.request_hash)
        if stored is not None:
            raise Replayed(stored)
        # Expired between the two statements: as good as in progress; a retry claims it.
        raise IdempotencyKeyInProgress(claim.key)

    async def answer(
        self, conn: AsyncConnection, claim: KeyClaim, response: StoredResponse
    ) -> None:
        """Record the answer of a key claimed by ``claim_pending``, in the transaction that
        settles the request's last step."""
        await conn.execute(
            update(idempotency_keys)
            .where(
                idempotency_keys.c.tenant == claim.tenant,
                idempotency_keys.c.key == claim.key,
                idempotency_keys.c.request_hash == claim.request_hash,
                idempotency_keys.c.status.is_(None),
            )
            .values(
                status=response.status,
                body=response.body,
                media_type=response.media_type,
                expires_at=database_clock() + self.ttl,
            )
        )

    async def record(
        self,
        conn: AsyncConnection,
        tenant: str,
        key: str,
        request_hash: str,
        response: StoredResponse,
    ) -> None:
        now = database_clock()
        values: dict[str, Any] = {
            "tenant": tenant,
            "key": key,
            "request_hash": request_hash,
            "status": response.status,
            "body": response.body,
            "media_type": response.media_type,
            "created_at": now,
            "expires_at": now + self.ttl,
        }
        statement = postgresql.insert(idempotency_keys).values(**values)
        # An expired record of the same key is replaced; a live one is never overwritten.
        statement = statement.on_conflict_do_update(
            index_elements=[idempotency_keys.c.tenant, idempotency_keys.c.key],
            set_={
                name: statement.excluded[name] for name in values if name not in ("tenant", "key")
            },
            where=idempotency_keys.c.expires_at <= now,
        )
        await conn.execute(statement)

    async def save(
        self, tenant: str, key: str, request_hash: str, response: StoredResponse
    ) -> None:
        """Record an answer in a transaction of its own (answers that wrote nothing)."""
        async with write_transaction(self.engine) as conn:
            await self.record(conn, tenant, key, request_hash, response)

    async def prune(self) -> int:
        """Delete expired keys; returns how many."""
        async with write_transaction(self.engine) as conn:
            result = await conn.execute(
                delete(idempotency_keys).where(idempotency_keys.c.expires_at <= database_clock())
            )
        return int(result.rowcount or 0)

    async def _stored(
        self, conn: AsyncConnection, tenant: str, key: str, request_hash: str
    ) -> StoredResponse | None:
        row = (
            await conn.execute(
                select(
                    idempotency_keys.c.request_hash,
                    idempotency_keys.c.status,
                    idempotency_keys.c.body,
                    idempotency_keys.c.media_type,
                ).where(
                    idempotency_keys.c.tenant == tenant,
                    idempotency_keys.c.key == key,
                    idempotency_keys.c.expires_at > database_clock(),
                )
            )
        ).first()
        if row is None:
            return None
        if row.request_hash != request_hash:
            raise IdempotencyKeyReused(key)
        if row.status is None:
            # Claimed by a request whose answer is not known yet (claim_pending).
            raise IdempotencyKeyInProgress(key)
        return StoredResponse(int(row.status), bytes(row.body), row.media_type)


class IdempotencyHook:
    """Claims the key at the start of the first write transaction of a request and records
    the answer before that transaction commits."""

    def __init__(
        self,
        store: IdempotencyStore,
        tenant: str,
        key: str,
        request_hash: str,
        answer: Callable[[Any], StoredResponse],
    ) -> None:
        self.store = store
        self.tenant = tenant
        self.key = key
        self.request_hash = request_hash
        self.answer = answer
        self.recorded = False
        self._pending = False

    async def before(self, conn: AsyncConnection) -> None:
        self._pending = False
        if not self.recorded:
            await self.store.claim(conn, self.tenant, self.key, self.request_hash)

    async def after(self, conn: AsyncConnection, result: Any) -> None:
        if self.recorded:
            return
        await self.store.record(conn, self.tenant, self.key, self.request_hash, self.answer(result))
        self._pending = True

    def committed(self) -> None:
        self.recorded = self.recorded or self._pending
