"""Jobs as the ``kiq jobs`` command shows them: a readable table or JSON.

Rows come from :mod:`kiq.api` records; arguments are shown as the Web UI shows
them (an encrypted job's last argument is ``"[encrypted data]"``) and cut to
fit a terminal.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from kiq.api import JobRecord, Work

__all__ = ["Row", "ago", "render_table", "row_of", "row_of_work"]

#: Columns of the table and the most characters each shows.
COLUMNS = (("jid", 24), ("class", 32), ("args", 40), ("queue", 16), ("error", 40), ("when", 14))

Row = dict[str, Any]


def ago(at: float | None, now: float | None = None) -> str:
    """``"in 3m10s"`` / ``"2h5m ago"`` for an epoch time; ``""`` when unknown."""
    if at is None:
        return ""
    delta = at - (time.time() if now is None else now)
    secs = int(abs(delta))
    if secs < 60:
        text = f"{secs}s"
    elif secs < 3600:
        text = f"{secs // 60}m{secs % 60}s"
    elif secs < 86400:
        text = f"{secs // 3600}h{secs % 3600 // 60}m"
    else:
        text = f"{secs // 86400}d{secs % 86400 // 3600}h"
    return f"in {text}" if delta > 0 else f"{text} ago"


def _iso(at: float | None) -> str | None:
    return None if at is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def row_of(job: JobRecord, when: float | None) -> Row:
    """One job as a JSON-ready row; ``when`` is the time its listing is about
    (next retry, run time, death, or when it was enqueued)."""
    return {
        "jid": job.jid,
        "class": job.class_name,
        "args": job.display_args,
        "queue": job.queue,
        "error_class": job.error_class,
        "error_message": job.error_message,
        "retry_count": job.retry_count,
        "at": when,
        "at_iso": _iso(when),
        "enqueued_at": job.enqueued_at,
        "created_at": job.created_at,
    }


def row_of_work(work: Work) -> Row:
    """A running job, with the process running it."""
    row = row_of(work.job, float(work.run_at))
    row["process"] = work.process
    return row


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())  # one line
    return text if len(text) <= width else text[: width - 1] + "…"


def _cells(row: Row) -> list[str]:
    args = json.dumps(row["args"], ensure_ascii=False)[1:-1]
    error = f"{row['error_class']}: {row['error_message']}" if row.get("error_class") else ""
    values = [row["jid"], row["class"], args, row["queue"], error, ago(row["at"])]
    return [_cut(str(v), w) for v, (_, w) in zip(values, COLUMNS, strict=True)]


def render_table(rows: Sequence[Row]) -> str:
    """The rows as aligned columns under a header (no trailing spaces)."""
    cells = [[name.upper() for name, _ in COLUMNS], *(_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells)
