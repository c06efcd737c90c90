"""How the leaderboard, the report, the dashboard's notes and the model card write a 95%
interval: "low-high", to 3 decimals unless a table says otherwise."""

from __future__ import annotations

from typing import Any


def format_interval(interval: Any, places: int = 3, missing: str = "-") -> str:
    """`interval` ([low, high], as the board stores it) as "low-high"; `missing` for anything
    that is no interval (no verdict, or a row without one)."""
    if not isinstance(interval, list):
        return missing
    low, high = interval
    return f"{low:.{places}f}-{high:.{places}f}"
