"""Tables. Every primary key begins with the tenant; invariants are CHECK constraints too."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime, stored as ``timestamptz``."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def Key(length: int) -> String:  # noqa: N802 - reads as a column type
    """A key column compared bytewise ("C"), so its order is the same whatever the locale."""
    return String(length, collation="C")


accounts = Table(
    "accounts",
    metadata,
    Column("tenant", Key(16), primary_key=True),
    Column("customer_id", Key(255), primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
    # The active points as of the last write, while no lot they count has expired: valid from
    # active_since until active_until (migration 0006). NULL until the first write since then.
    Column("active_points", BigInteger, nullable=True),
    Column("active_since", UTCDateTime, nullable=True),
    Column("active_until", UTCDateTime, nullable=True),
    # Points deducted beyond the balance and not yet paid by a later lot (migration 0012): the
    # balance is the open lots' points less this.
    Column("debt", BigInteger, nullable=False, server_default=text("0")),
    CheckConstraint("debt >= 0", name="debt_not_negative"),
)

# An entry's id is unique per customer, across its lots and redemptions together (checked by
# rewardpoints_entry_seen under the customer's lock; migration 0010).
lots = Table(
    "lots",
    metadata,
    Column("tenant", Key(16), primary_key=True),
    Column("customer_id", Key(255), primary_key=True),
    Column("id", Key(255), primary_key=True),
    Column("reference_id", Text, nullable=True),
    Column("description", Text, nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("used_points", BigInteger, nullable=False, server_default=text("0")),
    Column("created_at", UTCDateTime, nullable=False),
    Column("valid_until", UTCDateTime, nullable=False),
    Column("all_points_after_creation", BigInteger, nullable=False),
    Column("request_hash", String(64), nullable=False),
    # True once every point is spent; changes once in a lot's life, so the index of open lots
    # below does not stop PostgreSQL from updating a lot in place (migration 0005).
    Column("used_up", Boolean, Computed("used_points >= points"), nullable=False),
    # A used-up lot's item in summaries, as documents.py writes it, stored by the redemption
    # that spends its last point (rewardpoints_lot_item). NULL: build it.
    Column("summary_item", Text, nullable=True),
    # Points a reversal gave back to the lot after its validUntil (migration 0012): they came
    # back expired, so the lot's remainder at its validUntil is points - used_points - this.
    Column("expired_returns", BigInteger, nullable=False, server_default=text("0")),
    # Set by the first write of the customer at or after validUntil while the lot has points
    # left, or by a reversal giving points back to it after validUntil (rewardpoints_expire,
    # migration 0013): it is never drawn from again, and the index of the lots to draw from
    # leaves it out. A lot past its validUntil may still be unmarked; every rule reads
    # validUntil itself.
    Column("expired", Boolean, nullable=False, server_default=text("false")),
    CheckConstraint("points > 0", name="points_positive"),
    CheckConstraint(
        "expired_returns >= 0 AND expired_returns <= points - used_points",
        name="expired_returns_within",
    ),
    CheckConstraint("used_points >= 0 AND used_points <= points", name="used_within_points"),
    ForeignKeyConstraint(
        ["tenant", "customer_id"], ["accounts.tenant", "accounts.customer_id"], ondelete="CASCADE"
    ),
    Index("ix_lots_customer_order", "tenant", "customer_id", "created_at", "id"),
    # The lots a redemption may draw from, oldest first: points left, not marked expired
    # (migration 0013).
    Index(
        "ix_lots_customer_open",
        "tenant",
        "customer_id",
        "created_at",
        "id",
        postgresql_where=text("NOT used_up AND NOT expired"),
    ),
    # The lots with points left by validUntil: the lots that expired since a customer's last
    # write and its next expiry (rewardpoints_available), expiring points, and the expired
    # entries of a history page (migration 0012).
    Index(
        "ix_lots_customer_expiry",
        "tenant",
        "customer_id",
        "valid_until",
        "id",
        postgresql_where=text("NOT used_up"),
    ),
)

redemptions = Table(
    "redemptions",
    metadata,
    Column("tenant", Key(16), primary_key=True),
    Column("customer_id", Key(255), primary_key=True),
    Column("id", Key(255), primary_key=True),
    Column("description", Text, nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("all_points_after_creation", BigInteger, nullable=False),
    Column("request_hash", String(64), nullable=False),
    # A deduction (deductPoints) is a redemption marked so; what it could not draw from the
    # lots is owed until later lots pay it. A redemption's reversed points went back to its
    # lots (reversePoints). Migration 0012.
    Column("deducted", Boolean, nullable=False, server_default=text("false")),
    Column("owed", BigInteger, nullable=False, server_default=text("0")),
    Column("reversed_points", BigInteger, nullable=False, server_default=text("0")),
    CheckConstraint("points > 0", name="points_positive"),
    CheckConstraint("owed >= 0 AND owed <= points", name="owed_within"),
    CheckConstraint("reversed_points >= 0 AND reversed_points <= points", name="reversed_within"),
    ForeignKeyConstraint(
        ["tenant", "customer_id"], ["accounts.tenant", "accounts.customer_id"], ondelete="CASCADE"
    ),
    Index("ix_redemptions_customer_order", "tenant", "customer_id", "created_at", "id"),
    Index(
        "ix_redemptions_customer_owed",
        "tenant",
        "customer_id",
        "created_at",
        "id",
        postgresql_where=text("owed > 0"),
    ),
)

# A reversal of (part of) a redemption: its points went back to the redemption's lots,
# restored, or expired when the lot had expired meanwhile (rewardpoints_reverse).
reversals = Table(
    "reversals",
    metadata,
    Column("tenant", Key(16), primary_key=True),
    Column("customer_id", Key(255), primary_key=True),
    Column("id", Key(255), primary_key=True),
    Column("redemption_id", Key(255), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("restored_points", BigInteger, nullable=False),
    Column("expired_points", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("request_hash", String(64), nullable=False),
    CheckConstraint("points > 0", name="points_positive"),
    CheckConstraint(
        "restored_points >= 0 AND expired_points >= 0"
        " AND restored_points + expired_points = points",
        name="parts",
    ),
    ForeignKeyConstraint(
        ["tenant", "customer_id", "redemption_id"],
        ["redemptions.tenant", "redemptions.customer_id", "redemptions.id"],
        ondelete="CASCADE",
    ),
)

# Every entry of every customer, as history lists it (rewardpoints_record): what each write
# did, the balance it left, who made it and why. ``seq`` orders the entries of one instant.
journal = Table(
    "journal",
    metadata,
    Column("tenant", Key(16), primary_key=True),
    Column("customer_id", Key(255), primary_key=True),
    Column("created_at", UTCDateTime, primary_key=True),
    Column("seq", BigInteger, Identity(always=True), primary_key=True),
    Column("kind", Text, nullable=False),
    Column("entry_id", Key(255), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("balance_after", BigInteger, nullable=False),
    Column("reference_id", Text, nullable=True),
    Column("reason", Text, nullable=True),
    Column("actor", Text, nullable=True),
    CheckConstraint("points > 0", name="points_positive"),
    CheckConstraint(
        "kind IN ('added', 'chargeback', 'redeemed', 'reversed', 'deducted', 'expired')",
        name="known_kind",
    ),
    ForeignKeyConstraint(
        ["tenant", "customer_id"], ["accounts.tenant", "accounts.customer_id"], ondelete="CASCADE"
    ),
)

# Which redemption drew how many points from which lot: the lot's ``usedWith``.
lot_usages = Table(
    "lot_usages",
    metadata,
    Column("tenant", Key(16), primary_key=True),
    Column("customer_id", Key(255), primary_key=True),
    Column("lot_id", Key(255), primary_key=True),
    Column("redemption_id", Key(255), primary_key=True),
    Column("points", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    CheckConstraint("points > 0", name="points_positive"),
    ForeignKeyConstraint(
        ["tenant", "customer_id", "lot_id"],
        ["lots.tenant", "lots.customer_id", "lots.id"],
        ondelete="CASCADE",
    ),
    ForeignKeyConstraint(
        ["tenant", "customer_id", "redemption_id"],
        ["redemptions.tenant", "redemptions.customer_id", "redemptions.id"],
        ondelete="CASCADE",
    ),
    Index("ix_lot_usages_redemption", "tenant", "customer_id", "redemption_id"),
    # A lot's usages in the order of its usedWith list (migration 0007).
    Index(
        "ix_lot_usages_lot_order", "tenant", "customer_id", "lot_id", "created_at", "redemption_id"
    ),
)

# Stretches of a long summary's lists made once and read instead of their entries
# (documents.py; migration 0014): ``items`` are the list items, each after a comma, of the
# customer's ``entries`` lots (``list`` 'lots') or redemptions ('redemptions') from
# (first_at, first_id) to (last_at, last_id) in list order, every one of them; a lot in a
# segment is used up. Made by a summary's read, under the customer's lock; a write that
# changes such an entry (rewardpoints_reverse) deletes its segment in the same transaction.
summary_segments = Table(
    "summary_segments",
    metadata,
    Column("tenant", Key(16), primary_key=True),
    Column("customer_id", Key(255), primary_key=True),
    Column("list", Text, primary_key=True),
    Column("first_at", UTCDateTime, primary_key=True),
    Column("first_id", Key(255), primary_key=True),
    Column("last_at", UTCDateTime, nullable=False),
    Column("last_id", Key(255), nullable=False),
    Column("entries", Integer, nullable=False),
    Column("items", Text, nullable=False),
    CheckConstraint("list IN ('lots', 'redemptions')", name="known_list"),
    CheckConstraint("entries > 0", name="entries_positive"),
    ForeignKeyConstraint(
        ["tenant", "customer_id"], ["accounts.tenant", "accounts.customer_id"], ondelete="CASCADE"
    ),
)

# The tenant's ways to turn points into a coupon. ``coupon`` is the coupon template as JSON.
redeem_options = Table(
    "redeem_options",
    metadata,
    Column("tenant", Key(16), primary_key=True),
    Column("id", Key(24), primary_key=True),
    Column("type", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=True),
    Column("points", BigInteger, nullable=False),
    Column("coupon", Text, nullable=True),
    Column("version", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("modified_at", UTCDateTime, nullable=False),
    CheckConstraint("points > 0", name="points_positive"),
    CheckConstraint("version >= 1", name="version_positive"),
    Index("ix_redeem_options_order", "tenant", "created_at", "id"),
)

# Coupons issued by the built-in issuer; ``body`` is the coupon as JSON, as Emporix writes it.
coupons = Table(
    "coupons",
    metadata,
    Column("tenant", Key(16), primary_key=True),
    Column("code", Key(255), primary_key=True),
    Column("customer_id", Key(255), nullable=False),
    Column("redemption_id", Key(255), nullable=False),
    Column("redeem_option_id", Key(24), nullable=False),
    Column("site_code", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    ForeignKeyConstraint(
        ["tenant", "customer_id", "redemption_id"],
        ["redemptions.tenant", "redemptions.customer_id", "redemptions.id"],
        ondelete="CASCADE",
    ),
    UniqueConstraint("tenant", "customer_id", "redemption_id"),
    Index("ix_coupons_customer_order", "tenant", "customer_id", "created_at", "code"),
)

# Orders whose points were awarded: the order id makes the award exactly-once.
awarded_orders = Table(
    "awarded_orders",
    metadata,
    Column("tenant", Key(16), primary_key=True),
    Column("order_id", Key(255), primary_key=True),
    Column("customer_id", Key(255), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("lot_id", Key(255), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    CheckConstraint("points >= 0", name="points_not_negative"),
)

# The first answer to each Idempotency-Key, replayed until ``expires_at``. ``status`` and
# ``body`` are NULL while the key is claimed and its answer not yet known (migration 0011);
# ``expires_at`` is then 'infinity' (idempotency.claim_pending).
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("tenant", Key(16), primary_key=True),
    Column("key", Key(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status", Integer, nullable=True),
    Column("body", LargeBinary, nullable=True),
    Column("media_type", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_idempotency_keys_expires_at", "expires_at"),
)

# Work that must follow a committed write (outbox.py): recorded in the write's transaction, run
# by whichever process holds its lease (``run_after`` in the future), done exactly once.
outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("tenant", Key(16), nullable=False),
    Column("kind", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("run_after", UTCDateTime, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("done_at", UTCDateTime, nullable=True),
    Column("outcome", Text, nullable=True),
    Column("last_error", Text, nullable=True),
    Index("ix_outbox_due", "run_after", postgresql_where=text("done_at IS NULL")),
    Index("ix_outbox_done_at", "done_at"),
)
