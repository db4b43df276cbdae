"""kiq's web dashboard: Sidekiq's Web UI for Python teams.

An ASGI app that reads and acts on the same Redis keys as Sidekiq's Web UI,
so Ruby and Python jobs and processes show side by side::

    from fastapi import FastAPI
    import kiq.web

    api = FastAPI()
    api.mount("/kiq", kiq.web.create_app("redis://localhost:6379/0"))

or ``kiq web --bind 127.0.0.1:7433`` on its own. Needs ``pip install 'kiq[web]'``.
"""

from kiq.web.app import create_app
from kiq.web.security import Auth, BasicAuth

__all__ = ["Auth", "BasicAuth", "create_app"]
