"""Domain errors. They carry what went wrong; ``api/errors.py`` decides how it looks on the wire."""

from __future__ import annotations


class RewardPointsError(Exception):
    """Base of every error this service raises on purpose."""


class CustomerNotFound(RewardPointsError):
    """The customer has no reward-points entry."""

    def __init__(self, customer_id: str) -> None:
        super().__init__(f"No reward points found for customer {customer_id}")
        self.customer_id = customer_id


class CustomerExists(RewardPointsError):
    """An entry for the customer already exists."""

    def __init__(self, customer_id: str) -> None:
        super().__init__(
            f"Couldn't create a new reward point entry for the customer '{customer_id}'"
        )
        self.customer_id = customer_id


class InsufficientPoints(RewardPointsError):
    """A redemption asks for more than the customer's active points."""

    def __init__(self, requested: int, available: int) -> None:
        super().__init__(f"Not enough reward points: requested {requested}, available {available}")
        self.requested = requested
        self.available = available


class EntryConflict(RewardPointsError):
    """A client-given entry id is already used by an entry with other content."""

    def __init__(self, entry_id: str) -> None:
        super().__init__(f"An entry with id '{entry_id}' already exists with other content")
        self.entry_id = entry_id


class InvalidRequest(RewardPointsError):
    """The request is well-formed JSON but breaks a rule of the ledger."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownSite(InvalidRequest):
    """The siteCode names no configured site."""

    def __init__(self, site_code: str) -> None:
        super().__init__(f"Unknown siteCode '{site_code}'", field="siteCode")


class Unavailable(RewardPointsError):
    """Something the service depends on cannot answer now; the request may be retried."""


class DatabaseUnavailable(Unavailable):
    """The database cannot be reached, or a lock could not be had in time."""


class KeysUnavailable(Unavailable):
    """The JWKS document that would verify the token cannot be fetched."""


class AuthenticationFailed(RewardPointsError):
    """The bearer token is missing, malformed, expired or badly signed."""


class Forbidden(RewardPointsError):
    """The token is valid but may not do this."""

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.details = details or []
