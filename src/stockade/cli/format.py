"""Human formats the Docker CLI uses: sizes (decimal, 3 significant digits), "4 weeks ago", tables."""

from __future__ import annotations

import time
from datetime import datetime


def human_size(size: float) -> str:
    """Docker's units.HumanSize: 1000-based, up to 4 significant digits ("5.58MB", "0B")."""
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000
        i += 1
    return f"{size:.4g}{units[i]}"


def parse_time(text: str) -> float | None:
    if not text:
        return None
    try:
        # Go's RFC 3339 with nanoseconds: trim to microseconds for fromisoformat.
        main, _, frac = text.rstrip("Z").partition(".")
        frac = "".join(c for c in frac if c.isdigit())[:6]
        tail = text[len(main) + 1 + len(frac) :] if frac else ""
        tz = "+00:00" if text.endswith("Z") else ("" if not tail or tail[0] not in "+-" else tail)
        iso = main + (f".{frac}" if frac else "") + tz
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def human_ago(timestamp: float | None, now: float | None = None) -> str:
    """Docker's HumanDuration + " ago"."""
    if timestamp is None:
        return "N/A"
    seconds = max(0.0, (now or time.time()) - timestamp)
    if seconds < 1:
        return "Less than a second ago"
    if seconds < 60:
        return f"{int(seconds)} seconds ago" if int(seconds) != 1 else "1 second ago"
    minutes = seconds / 60
    if minutes < 60:
        return "About a minute ago" if int(minutes) == 1 else f"{int(minutes)} minutes ago"
    hours = minutes / 60
    if hours < 1.5:
        return "About an hour ago"
    if hours < 48:
        return f"{round(hours)} hours ago"
    days = hours / 24
    if days < 7 * 2:
        return f"{int(days)} days ago"
    if days < 30 * 3:
        return f"{int(days / 7)} weeks ago"
    if days < 365 * 2:
        return f"{int(days / 30)} months ago"
    return f"{int(days / 365)} years ago"


def table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded like Docker's tabwriter (3 spaces between columns)."""
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
