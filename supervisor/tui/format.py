"""How numbers and states read on screen. Pure functions, so every pane says a number the same way."""

from __future__ import annotations

import time
from typing import Any

from supervisor.core.types import TrialStatus

STATUS_SYMBOL = {TrialStatus.KEEP: "●", TrialStatus.DISCARD: "○", TrialStatus.CRASH: "✗", TrialStatus.ABORTED: "–",
                 TrialStatus.RUNNING: "▶", TrialStatus.HELD: "⊘"}


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


def plural(count: int, word: str, many: str | None = None) -> str:
    """`1 trial`, `2 trials`, `1 entry`, `3 entries`: a count with its noun agreeing."""
    if count == 1:
        return f"1 {word}"
    if many is None:
        if word.endswith("y") and word[-2:-1] not in "aeiou":
            many = word[:-1] + "ies"
        elif word.endswith(("s", "sh", "ch", "x")):
            many = word + "es"
        else:
            many = word + "s"
    return f"{count:,} {many}"


def mb_pair(used: Any, total: Any) -> str:
    """Used of total memory in one unit, short enough for a narrow pane: `6.0/24.0 GB`, `512/2048 MB`."""
    if used is None or total is None:
        return f"{mb(used)}/{mb(total)}"
    used, total = float(used), float(total)
    if total >= 2 * 1024:
        return f"{used / 1024:.1f}/{total / 1024:.1f} GB"
    return f"{used:.0f}/{total:.0f} MB"
