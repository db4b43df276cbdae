"""Children's memory, read from ``/proc`` (Linux): resident set size (what
``--max-memory`` limits, cheap enough to read every 0.2 s) and proportional
set size (pages shared copy-on-write with the parent and siblings counted in
shares: what preloading saves shows here)."""

from __future__ import annotations

import os

__all__ = ["rss_bytes", "rss_pss_bytes"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` in bytes; None when it cannot be read (gone, not Linux)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def rss_pss_bytes(pid: int) -> tuple[int, int] | None:
    """``(rss, pss)`` of ``pid`` in bytes, from ``smaps_rollup``; None when unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["Rss"].split()[0]) * 1024, int(fields["Pss"].split()[0]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        return None
