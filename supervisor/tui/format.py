"""How numbers and states read on screen. Pure functions, so every pane says a number the same way."""

from __future__ import annotations

import time
from typing import Any

STATUS_SYMBOL = {"keep": "●", "discard": "○", "crash": "✗", "aborted": "–", "running": "▶"}


def num(value: Any, digits: int = 4, default: str = "—") -> str:
    if value is None:
        return default
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return default


def signed(value: Any, digits: int = 4, default: str = "") -> str:
    if value is None:
        return default
    return f"{float(value):+.{digits}f}"


def integer(value: Any, default: str = "—") -> str:
    if value is None:
        return default
    return f"{int(value):,}"


def mb(value: Any, default: str = "—") -> str:
    """Megabytes as a person reads them: GiB above 10 GB, MB below."""
    if value is None:
        return default
    value = float(value)
    return f"{value / 1024:.1f} GB" if value >= 10 * 1024 else f"{value:.0f} MB"


def percent(value: Any, digits: int = 0, default: str = "—") -> str:
    if value is None:
        return default
    return f"{float(value):.{digits}f}%"


def rate(value: Any, default: str = "—") -> str:
    """Tokens per second, short: 6.4k, 1.2M."""
    if value is None:
        return default
    value = float(value)
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def duration(seconds: Any, default: str = "—") -> str:
    if seconds is None:
        return default
    seconds = max(0, int(round(float(seconds))))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def clock(timestamp: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(timestamp)) if timestamp else "--:--:--"


def stamp(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else "?"


def one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def money(value: Any) -> str | None:
    """A cost figure from `status` (a number of dollars, or a dict holding one), or None when absent."""
    if isinstance(value, dict):
        for key in ("total_usd", "usd", "total", "cost_usd", "dollars"):
            if isinstance(value.get(key), int | float):
                return f"${value[key]:.2f}"
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"${value:.2f}"
    return None
