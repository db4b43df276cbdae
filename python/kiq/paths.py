"""Where kiq keeps files of its own: jobs that could not reach Redis.

The state directory is ``$KIQ_STATE_DIR``, else ``$XDG_STATE_HOME/kiq``,
else ``~/.local/state/kiq`` (the XDG base-directory convention); a
``Kiq(state_dir=...)`` overrides it. It holds:

- ``unsent-<identity>/``: a spool of the jobs a process still held when it
  exited without reaching Redis (``kiq spool push DIR`` delivers them);
- ``undeliverable-<identity>.jsonl``: jobs Redis refused for a reason retrying
  cannot fix (a key of the wrong type, an ACL), one JSON object per line
  (``kiq spool push FILE`` pushes them again once the key is fixed).

With ``buffer_path``, the dead-letter file lives in that directory instead.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_state_dir", "undeliverable_path", "unsent_dir"]


def default_state_dir() -> Path:
    explicit = os.environ.get("KIQ_STATE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "kiq"


def _safe(identity: str) -> str:
    """An identity as a file-name part (identities hold ':')."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in identity)


def undeliverable_path(state_dir: Path, identity: str, buffer_path: str | os.PathLike[str] | None) -> Path:
    if buffer_path is not None:
        return Path(buffer_path) / "undeliverable.jsonl"
    return state_dir / f"undeliverable-{_safe(identity)}.jsonl"


def unsent_dir(state_dir: Path, identity: str) -> Path:
    return state_dir / f"unsent-{_safe(identity)}"
