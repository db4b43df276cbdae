"""``async def`` jobs and the async client, as in a FastAPI app.

``async`` workers run on an event loop kiq owns, next to sync workers, each
queue's concurrency bounding how many run at once. Web handlers enqueue with
``await app.enqueue_async(...)``, which never blocks their event loop.
"""

from __future__ import annotations

import asyncio
import logging

from kiq import Kiq, Worker

log = logging.getLogger(__name__)


class FetchFeed(Worker, queue="feeds", retry=3, timeout=30):
    """Past ``timeout`` seconds the coroutine is cancelled and the job retried."""

    async def perform(self, url: str) -> None:
        await asyncio.sleep(0.1)  # stands in for an HTTP request
        log.info("fetched %s", url)


class Thumbnail(Worker, queue="images"):
    def perform(self, path: str) -> None:  # a sync worker in the same process
        log.info("thumbnailed %s", path)


app = Kiq(queues={"feeds": 50, "images": 4}, workers=[FetchFeed, Thumbnail])


async def subscribe(url: str) -> str:
    """What a web handler does: enqueue and answer at once."""
    return await app.enqueue_async(FetchFeed.new(url))


if __name__ == "__main__":
    print(asyncio.run(subscribe("https://example.com/feed.xml")))
    app.run()
