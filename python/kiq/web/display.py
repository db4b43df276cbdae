"""Template helpers: times, numbers, arguments. Every value they return is
plain text; the templates escape it (autoescape is on for every template)."""

from __future__ import annotations

import datetime as dt
import json
import time

from kiq._kiq import JobView

__all__ = ["args_text", "duration", "isodate", "filters", "isotime", "number", "pretty", "reltime", "sparkline"]


def isotime(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def isodate(ts: float | None) -> str:
    """Machine-readable time for ``<time datetime>``."""
    return "" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(seconds: float) -> str:
    """A short human duration: 42s, 5m, 3h, 2d."""
    s = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit}"
    return f"{s:.0f}s" if s >= 1 else f"{s:.2f}s"


def reltime(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return ""
    delta = ts - (time.time() if now is None else now)
    if abs(delta) < 1:
        return "just now"
    return f"in {duration(delta)}" if delta > 0 else f"{duration(delta)} ago"


def number(n: float) -> str:
    return f"{n:,}"


def args_text(job: JobView, limit: int = 200) -> str:
    """The arguments on one line, as Sidekiq lists them, cut at ``limit`` characters."""
    text = ", ".join(job.args)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pretty(arg: str) -> str:
    """One argument's JSON text, indented when it is a structure."""
    try:
        return json.dumps(json.loads(arg), indent=2, ensure_ascii=False)
    except ValueError:
        return arg


def truncate(text: str | None, limit: int = 200) -> str:
    text = text or ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sparkline(values: list[int], width: int = 240, height: int = 32) -> str:
    """SVG polyline points for a series (drawn by the page, no script needed)."""
    if not values:
        return ""
    top = max(values) or 1
    step = width / max(len(values) - 1, 1)
    return " ".join(f"{i * step:.1f},{height - v * (height - 2) / top - 1:.1f}" for i, v in enumerate(values))


def filters() -> dict[str, object]:
    return {
        "isotime": isotime,
        "isodate": isodate,
        "reltime": reltime,
        "duration": duration,
        "number": number,
        "args_text": args_text,
        "pretty": pretty,
        "truncate_text": truncate,
        "sparkline": sparkline,
    }
