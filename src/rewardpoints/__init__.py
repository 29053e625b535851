"""rewardpoints: a points ledger that speaks the Emporix Reward-points Service API."""

__version__ = "0.1.0"
