"""Redeem options: a tenant's ways to turn points into a coupon, versioned for optimistic locking.

A write bumps ``version``; an update that names a version applies only while that version is
still current, checked and applied in one ``UPDATE ... WHERE version = :expected``, so two
concurrent updates of one version cannot both succeed.
"""

from __future__ import annotations

import itertools
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import database_now, read_transaction, run_transaction
from .errors import RedeemOptionNotFound, VersionConflict
from .models import redeem_options

# ObjectId layout: 4 bytes of seconds, 5 random bytes per process, a 3-byte counter.
_PROCESS_RANDOM = secrets.token_bytes(5).hex()
_COUNTER = itertools.count(secrets.randbelow(1 << 24))


def object_id(now: datetime) -> str:
    """A 24-hex id shaped like a MongoDB ObjectId, as Emporix's redeem-option ids are."""
    seconds = int(now.timestamp()) & 0xFFFFFFFF
    return f"{seconds:08x}{_PROCESS_RANDOM}{next(_COUNTER) & 0xFFFFFF:06x}"


@dataclass(frozen=True, slots=True)
class RedeemOptionContent:
    """What a client writes: everything but the id and the metadata."""

    type: str
    name: str
    description: str | None
    points: int
    coupon: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class RedeemOption:
    id: str
    type: str
    name: str
    description: str | None
    points: int
    coupon: dict[str, Any] | None
    version: int
    created_at: datetime
    modified_at: datetime


_COLUMNS = (
    redeem_options.c.id,
    redeem_options.c.type,
    redeem_options.c.name,
    redeem_options.c.description,
    redeem_options.c.points,
    redeem_options.c.coupon,
    redeem_options.c.version,
    redeem_options.c.created_at,
    redeem_options.c.modified_at,
)


def _option(row: Any) -> RedeemOption:
    return RedeemOption(
        id=row.id,
        type=row.type,
        name=row.name,
        description=row.description,
        points=int(row.points),
        coupon=json.loads(row.coupon) if row.coupon is not None else None,
        version=int(row.version),
        created_at=row.created_at,
        modified_at=row.modified_at,
    )


def _columns(content: RedeemOptionContent) -> dict[str, Any]:
    coupon = content.coupon
    return {
        "type": content.type,
        "name": content.name,
        "description": content.description,
        "points": content.points,
        "coupon": (
            json.dumps(coupon, ensure_ascii=False, separators=(",", ":"))
            if coupon is not None
            else None
        ),
    }


async def _list(conn: AsyncConnection, tenant: str) -> list[RedeemOption]:
    rows = await conn.execute(
        select(*_COLUMNS)
        .where(redeem_options.c.tenant == tenant)
        .order_by(redeem_options.c.created_at, redeem_options.c.id)
    )
    return [_option(row) for row in rows]


class RedeemOptionStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def for_tenant(self, tenant: str) -> list[RedeemOption]:
        async with read_transaction(self.engine) as conn:
            return await _list(conn, tenant)

    async def get(self, tenant: str, option_id: str) -> RedeemOption:
        async with read_transaction(self.engine) as conn:
            row = (
                await conn.execute(
                    select(*_COLUMNS).where(
                        redeem_options.c.tenant == tenant, redeem_options.c.id == option_id
                    )
                )
            ).first()
        if row is None:
            raise RedeemOptionNotFound(option_id)
        return _option(row)

    async def create(self, tenant: str, content: RedeemOptionContent) -> list[RedeemOption]:
        """Add an option; returns the tenant's options, the new one included."""

        async def body(conn: AsyncConnection) -> list[RedeemOption]:
            now = await database_now(conn)
            await conn.execute(
                insert(redeem_options).values(
                    tenant=tenant,
                    id=object_id(now),
                    version=1,
                    created_at=now,
                    modified_at=now,
                    **_columns(content),
                )
            )
            return await _list(conn, tenant)

        # A colliding id (vanishingly rare) fails the insert; the retry draws a new one.
        return await run_transaction(self.engine, body, retry_on_integrity=True)

    async def replace(
        self,
        tenant: str,
        option_id: str,
        content: RedeemOptionContent,
        expected_version: int | None,
    ) -> None:
        """Replace the whole option and bump its version; with ``expected_version`` only while
        that is the current version (VersionConflict otherwise)."""

        async def body(conn: AsyncConnection) -> None:
            now = await database_now(conn)
            conditions = [redeem_options.c.tenant == tenant, redeem_options.c.id == option_id]
            if expected_version is not None:
                conditions.append(redeem_options.c.version == expected_version)
            updated = await conn.execute(
                update(redeem_options)
                .where(*conditions)
                .values(
                    version=redeem_options.c.version + 1,
                    modified_at=now,
                    **_columns(content),
                )
                .returning(redeem_options.c.id)
            )
            if updated.first() is not None:
                return
            exists = await conn.execute(
                select(redeem_options.c.id).where(
                    redeem_options.c.tenant == tenant, redeem_options.c.id == option_id
                )
            )
            if exists.first() is None:
                raise RedeemOptionNotFound(option_id)
            raise VersionConflict(option_id)

        await run_transaction(self.engine, body)

    async def delete(self, tenant: str, option_id: str) -> None:
        async def body(conn: AsyncConnection) -> None:
            deleted = await conn.execute(
                delete(redeem_options)
                .where(redeem_options.c.tenant == tenant, redeem_options.c.id == option_id)
                .returning(redeem_options.c.id)
            )
            if deleted.first() is None:
                raise RedeemOptionNotFound(option_id)

        await run_transaction(self.engine, body)
