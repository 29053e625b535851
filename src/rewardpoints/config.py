"""Settings, read once from the environment (prefix ``REWARDPOINTS_``) or a ``.env`` file."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_POINTS = 2_147_483_647


@dataclass(frozen=True, slots=True)
class Site:
    code: str
    enabled: bool = True
    validity_in_months: int = 36
    code_prefix: str = "RP"
    order_value_to_reward_points_factor: float = 1.0
    # deductPoints beyond the balance: refused (False), or the shortfall owed (True).
    negative_balance: bool = False


def _default_dev_secret_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "rewardpoints" / "dev-secret"


# RFC 7518 §3.2: an HS256 secret of at least 256 bits.
MIN_SECRET_BYTES = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="REWARDPOINTS_", env_file=".env", extra="ignore", frozen=True
    )

    # Unset: a private PostgreSQL cluster that `rewardpoints serve` and `migrate` start in
    # data_dir (embedded.py) and hand to the application as this URL.
    database_url: str | None = None
    data_dir: Path = Path(".rewardpoints")
    database_pool_size: int = Field(default=10, ge=1)
    # Waiting longer than this for a free connection answers 503.
    database_pool_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # PostgreSQL ends a session left idle inside a transaction this long (0: never), so a
    # request that stalls cannot hold locks or old row versions indefinitely.
    database_idle_in_transaction_timeout_ms: int = Field(default=60000, ge=0)
    # Waiting longer than this for one customer's lock answers 503 instead of hanging.
    lock_timeout_ms: int = Field(default=5000, ge=1)
    # "transaction": REWARDPOINTS_DATABASE_URL is a pooler in transaction mode (PgBouncer's
    # pool_mode = transaction), which hands each transaction any of its server connections:
    # no session settings sent at connect, no named prepared statements (db.py). The two
    # timeouts above are then the database role's own (docs/scaling.md).
    database_pooler: Literal["none", "transaction"] = "none"
    # The primary itself, beside a pooler: the one-statement requests (balances, additions and
    # redemptions, direct.py) then go straight to it, with their prepared statements, and skip
    # the pooler's hop; at most database_pool_size connections per process. Everything else
    # keeps going through database_url.
    database_direct_url: str | None = None
    # A hot standby for the heavy reads (summaryBatch): used while it lags the primary by at
    # most read_replica_max_lag_seconds, else those reads go to the primary (replica.py).
    read_replica_url: str | None = None
    read_replica_max_lag_seconds: float = Field(default=10.0, gt=0, le=86400)

    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None
    jwt_jwks_url: str | None = None
    jwt_algorithms: str = ""
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300)
    dev_secret_file: Path = Field(default_factory=_default_dev_secret_file)

    validity_months: int = Field(default=36, ge=1, le=1200)
    # deductPoints beyond a customer's balance: refused as a redemption would be, or allowed,
    # the shortfall owed (a negative balance the next additions pay first). A site may say
    # otherwise in the sites file ("negativeBalance").
    negative_balance: Literal["refuse", "allow"] = "refuse"
    sites_file: Path | None = None

    # Unset: coupons are issued and kept by this service. Set: issued by an Emporix-compatible
    # Coupon Service at this base URL (``POST {url}/coupon/{tenant}/coupons``).
    coupon_service_url: str | None = None
    coupon_service_token: SecretStr | None = None
    coupon_service_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    coupon_service_attempts: int = Field(default=3, ge=1, le=10)
    # A redemption's coupon is issued (or its points charged back) from the outbox
    # (outbox.py): by the request, which waits at most half this lease for it, and else by
    # the outbox runner of any process once the lease has run out. It must outlast the
    # coupon service's attempts (checked below).
    outbox_lease_seconds: float = Field(default=60.0, gt=0, le=3600)
    # How often each process looks for intents whose lease has run out.
    outbox_poll_seconds: float = Field(default=1.0, gt=0, le=600)

    # /metrics in Prometheus' format (metrics.py); off, as it tells business totals.
    metrics_enabled: bool = False
    # The process log, uvicorn's access log included: text, or one JSON object a line.
    log_format: Literal["text", "json"] = "text"

    max_body_bytes: int = Field(default=65536, ge=1024)
    # How long the first answer to an Idempotency-Key is kept and replayed.
    idempotency_ttl_hours: float = Field(default=24.0, gt=0, le=24 * 30)
    idempotency_prune_interval_seconds: float = Field(default=600.0, gt=0)
    # Plain balance, addPoints and redeemPoints requests answered without FastAPI's
    # per-request machinery (api/fastlane.py); the answers are the same either way.
    fast_lane: bool = True
    # summaryBatch on PostgreSQL reads the tenant in ranges of this many customers, on up to
    # this many connections sharing one snapshot, so several PostgreSQL backends build the
    # documents at once while they are sent in order (documents.py).
    summary_batch_connections: int = Field(default=2, ge=1, le=16)
    summary_batch_range_customers: int = Field(default=2000, ge=1, le=1_000_000)
    # ... and at most this many exports at once per process; one more waits for a turn as long
    # as a request waits for a connection, then is answered 503.
    summary_batch_exports: int = Field(default=4, ge=1, le=1000)
    # On PostgreSQL, the summary of a customer with more lots, or more redemptions, than this is
    # streamed as it is read instead of built whole in memory first (documents.py).
    summary_stream_entries: int = Field(default=1000, ge=0, le=1_000_000)
    # ... by at most this many streams at once per process; one more waits for a turn as long
    # as a request waits for a connection, then is answered 503 (never built whole).
    summary_streams: int = Field(default=4, ge=1, le=1000)
    # ... and its finished stretches of this many lots, or redemptions, are made once and read
    # as one row each afterwards (summary segments, documents.py); 0: never made. A segment
    # reaches the worker whole, hence the bound.
    summary_segment_entries: int = Field(default=1000, ge=0, le=10_000)
    # On PostgreSQL, at most this many statements applying redemptions, and as many applying
    # additions, are out at once per process; the writes that wait meanwhile go together in
    # the next one (direct.py, rewardpoints_add_many.sql, rewardpoints_redeem_many.sql).
    write_statements: int = Field(default=2, ge=1, le=1000)
    # A streamed answer (summaryBatch, a long summary) whose client takes nothing for this long
    # is ended, and its database connections given up (api/streaming.py); 0: never.
    stream_send_timeout_seconds: float = Field(default=60.0, ge=0, le=3600)
    # A request's headers must arrive within this long of its first byte (of the connection's
    # opening, for the first), and its body within this long of its headers; past either the
    # client is answered 408 and the connection closed (api/protocol.py); 0: no limit.
    header_timeout_seconds: float = Field(default=10.0, ge=0, le=300)
    body_timeout_seconds: float = Field(default=30.0, ge=0, le=3600)
    # A connection closed while its request is still arriving (a 413 answered before the body
    # is read) is closed gracefully: the rest of the request is read and thrown away, up to
    # this many bytes for up to this long, so the client gets the answer rather than a reset
    # (api/protocol.py); 0 seconds: close at once.
    lingering_close_seconds: float = Field(default=5.0, ge=0, le=300)
    lingering_close_bytes: int = Field(default=8 * 1024 * 1024, ge=0)
    # Origins whose pages may call the service from a browser (CORS, api/cors.py): exact
    # origins, comma-separated, or `*` for any; empty: no CORS headers at all.
    cors_origins: str = ""

    @field_validator("database_url", "database_direct_url", "read_replica_url")
    @classmethod
    def _url_or_embedded(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        return asyncpg_url(value.strip())

    @field_validator("jwt_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        if len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            # RFC 7518 §3.2: an HS256 key is at least as long as the hash, 256 bits.
            raise ValueError(
                f"must be at least {MIN_SECRET_BYTES} bytes (RFC 7518 3.2); make one with "
                "`openssl rand -hex 32`"
            )
        return value

    @field_validator("jwt_public_key")
    @classmethod
    def _read_pem(cls, value: str | None) -> str | None:
        """Accept the PEM text itself or the path of a file holding it."""
        if value is None or value.strip() == "":
            return None
        if "-----BEGIN" in value:
            return value
        try:
            return Path(value).read_text()
        except OSError as error:
            raise ValueError(
                f"neither PEM text nor a readable file ({error.strerror}: {value})"
            ) from None

    @field_validator("coupon_service_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        return value.strip().rstrip("/")

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        return ",".join(parse_origins(value))

    @model_validator(mode="after")
    def _lease_outlasts_coupon_attempts(self) -> Settings:
        # The request's own run may take every attempt and the check of a possibly created
        # coupon, and must end inside half the lease, before another process takes over.
        longest = self.coupon_service_timeout_seconds * (self.coupon_service_attempts + 1) + 1
        if self.coupon_service_url is not None and self.outbox_lease_seconds < 2 * longest:
            raise ValueError(
                f"REWARDPOINTS_OUTBOX_LEASE_SECONDS must be at least {2 * longest:g}: twice "
                "(REWARDPOINTS_COUPON_SERVICE_TIMEOUT_SECONDS x "
                "(REWARDPOINTS_COUPON_SERVICE_ATTEMPTS + 1) + 1)"
            )
        return self

    @property
    def cors_allowed_origins(self) -> tuple[str, ...]:
        return tuple(origin for origin in self.cors_origins.split(",") if origin)

    @property
    def has_configured_key(self) -> bool:
        return bool(self.jwt_secret or self.jwt_public_key or self.jwt_jwks_url)

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The accepted JWT algorithms: configured, or implied by the configured keys."""
        configured = [a.strip() for a in self.jwt_algorithms.split(",") if a.strip()]
        if configured:
            return tuple(configured)
        implied: list[str] = []
        if self.jwt_secret or not self.has_configured_key:
            implied.append("HS256")
        if self.jwt_public_key:
            implied.append(_pem_algorithm(self.jwt_public_key))
        if self.jwt_jwks_url:
            implied += ["RS256", "ES256"]
        return tuple(dict.fromkeys(implied))

    def signing_secret(self) -> str | None:
        """The HMAC secret: configured, or the shared development secret when no key is set."""
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        if self.has_configured_key:
            return None
        return load_dev_secret(self.dev_secret_file)

    def sites(self) -> dict[str, Site]:
        allow = self.negative_balance == "allow"
        if self.sites_file is None:
            return {
                "main": Site(
                    code="main", validity_in_months=self.validity_months, negative_balance=allow
                )
            }
        return load_sites(self.sites_file, self.validity_months, negative_balance=allow)


def parse_origins(value: str) -> tuple[str, ...]:
    """Exact origins as a browser sends them (``https://shop.example.com``, lowercase, no
    default port), or ``*`` alone; refuses anything else: a browser never sends it, so a
    path, a trailing slash or a missing scheme would match no page."""
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    if entries == ["*"]:
        return ("*",)
    origins: list[str] = []
    for entry in entries:
        if entry == "*":
            raise ValueError("'*' (any origin) stands alone, without other origins")
        origins.append(_origin(entry))
    return tuple(dict.fromkeys(origins))


def _origin(entry: str) -> str:
    from urllib.parse import urlsplit

    problem = (
        f"{entry!r} is not an origin: expected scheme://host[:port], such as "
        "https://shop.example.com, without a path or a trailing slash"
    )
    try:
        parts = urlsplit(entry)
        port = parts.port
    except ValueError:
        raise ValueError(problem) from None
    if (
        parts.scheme.lower() not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.password is not None
        or parts.path
        or parts.query
        or parts.fragment
        or entry.endswith(("?", "#"))
    ):
        raise ValueError(problem)
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def asyncpg_url(url: str) -> str:
    """The URL with the driver the service uses: ``postgresql://`` and ``postgres://`` mean
    asyncpg; another driver, or not a PostgreSQL URL, is refused."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(
            "not a database URL; expected postgresql://user:password@host:5432/database"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend not in ("postgresql", "postgres"):
        raise ValueError(
            f"{backend!r} is not PostgreSQL; expected postgresql://user:password@host:5432/database"
        )
    if driver not in ("", "asyncpg"):
        raise ValueError(
            f"driver {driver!r} is not supported; use postgresql:// (the service uses asyncpg)"
        )
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def _pem_algorithm(pem: str) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(pem.encode())
    return "ES256" if isinstance(key, ec.EllipticCurvePublicKey) else "RS256"


def load_dev_secret(path: Path) -> str:
    """Read the development secret, creating it (mode 0600) on first use."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    return secret


def load_sites(
    path: Path, default_validity: int, *, negative_balance: bool = False
) -> dict[str, Site]:
    """Sites from a JSON file: ``{"main": {"enabled": true, "validityInMonths": 36, ...}}``;
    ``"negativeBalance": "allow"`` (or ``"refuse"``) overrides the service's setting."""
    raw: dict[str, Any] = json.loads(path.read_text())
    sites: dict[str, Site] = {}
    for code, conf in raw.items():
        sites[code] = Site(
            code=code,
            enabled=bool(conf.get("enabled", True)),
            validity_in_months=int(conf.get("validityInMonths", default_validity)),
            code_prefix=str(conf.get("codePrefix", "RP")),
            order_value_to_reward_points_factor=float(
                conf.get("orderValueToRewardPointsFactor", 1.0)
            ),
            negative_balance=(
                str(conf["negativeBalance"]).lower() in ("allow", "true")
                if "negativeBalance" in conf
                else negative_balance
            ),
        )
    return sites
