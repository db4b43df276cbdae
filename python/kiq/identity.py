"""Process identity in Sidekiq's form: ``hostname:pid:<12 hex>``."""

from __future__ import annotations

import os
import secrets
import socket


def hostname() -> str:
    """``$DYNO`` (Heroku) when set, else the machine's hostname, as Sidekiq picks it."""
    return os.environ.get("DYNO") or socket.gethostname()


def new_identity() -> str:
    return f"{hostname()}:{os.getpid()}:{secrets.token_hex(6)}"
