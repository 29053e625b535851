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


class ResourceNotFound(RewardPointsError):
    """Something the request names does not exist."""


class RedeemOptionNotFound(ResourceNotFound):
    """The tenant has no redeem option with this id."""

    def __init__(self, option_id: str) -> None:
        super().__init__(f"No redeem option found with id {option_id}")
        self.option_id = option_id


class RedemptionNotFound(ResourceNotFound):
    """The customer has no redemption with this id to reverse."""

    def __init__(self, customer_id: str, redemption_id: str) -> None:
        super().__init__(f"No redemption {redemption_id} found for customer {customer_id}")
        self.customer_id = customer_id
        self.redemption_id = redemption_id


class TooManyToReverse(InvalidRequest):
    """A reversal asks for more points than the redemption still holds."""

    def __init__(self, redemption_id: str, requested: int | None, left: int) -> None:
        if requested is None:
            message = f"Redemption {redemption_id} has no points left to reverse"
        else:
            message = (
                f"Cannot reverse {requested} points of redemption {redemption_id}:"
                f" {left} left to reverse"
            )
        super().__init__(message, field="points")
        self.requested = requested
        self.left = left


class VersionConflict(RewardPointsError):
    """An update names a version of the resource that is no longer the current one."""

    def __init__(self, resource_id: str) -> None:
        super().__init__(
            f"The resource that was requested for update with id = {resource_id} has changed. "
            "Please retry your request with valid version"
        )
        self.resource_id = resource_id


class OrderConflict(RewardPointsError):
    """An order id was already awarded to another customer."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"Points for order '{order_id}' were already awarded to another customer")
        self.order_id = order_id


class RewardPointsDisabled(InvalidRequest):
    """The site's reward points are switched off."""

    def __init__(self, site_code: str) -> None:
        super().__init__(f"Reward points are disabled for site '{site_code}'", field="siteCode")


class CouponIssueFailed(RewardPointsError):
    """The coupon could not be issued; the redeemed points were charged back."""


class CouponIssueUncertain(Unavailable):
    """The Coupon Service could not tell whether it created a coupon: the redemption is settled
    later, neither charged back nor given a coupon under another code meanwhile."""


class IdempotencyKeyInProgress(RewardPointsError):
    """A request with the same Idempotency-Key is still being processed."""

    def __init__(self, key: str) -> None:
        super().__init__("A request with this Idempotency-Key is still being processed")
        self.key = key


class IdempotencyKeyReused(RewardPointsError):
    """The Idempotency-Key was used before with a different request."""

    def __init__(self, key: str) -> None:
        super().__init__(
            "This Idempotency-Key was already used with a different request; "
            "use a new key for a new request"
        )
        self.key = key
