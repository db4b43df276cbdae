"""Batches and a chain: ``python examples/batches.py`` (Redis at $REDIS_URL).

A batch of ten jobs with a success callback, a child batch made from a job,
then a three-step chain; it stops once the chain succeeded.
"""

from __future__ import annotations

import logging
from typing import Any

from kiq import BatchStatus, Kiq, Worker, current_job, worker
from kiq.logs import configure
from kiq.workflow import chain

log = logging.getLogger(__name__)


@worker(queue="default")
def resize(image_id: int) -> None:
    log.info("resized image %d", image_id)


class Gallery(Worker):
    """A batch job that adds a child batch: its parent succeeds only after it."""

    def perform(self, gallery_id: int) -> None:
        child = app.batch(description=f"thumbnails of gallery {gallery_id}")
        with child.jobs():
            app.enqueue_bulk(resize, [[gallery_id * 100 + i] for i in range(3)])
        job = current_job()
        log.info("gallery %d: child batch %s of %s", gallery_id, child.bid, job.bid if job else None)


class GalleryReady(Worker, queue="default"):
    """The success callback: its arguments are the batch's status and the options."""

    def perform(self, status: BatchStatus, options: dict[str, Any]) -> None:
        log.info("batch %s: %d jobs succeeded, %d child batches (%s)", status.bid, status.total,
                 status.child_count, options["user"])


app = Kiq(queues={"default": 10}, workers=[resize, Gallery, GalleryReady])


def main() -> None:
    configure(logging.INFO, name=None)
    batch = app.batch(description="galleries of ada")
    batch.on("success", GalleryReady, {"user": "ada"})
    with batch.jobs():
        app.enqueue_bulk(resize, [[i] for i in range(10)])
        app.enqueue(Gallery.new(7))
    flow = chain(resize.new(1), [resize.new(i) for i in range(2, 6)], resize.new(6), description="three steps")
    with app:
        batch.wait(timeout=30)
        flow.start(app).wait(timeout=30)
        log.info("both done; status: %s", app.batch_status(batch.bid))


if __name__ == "__main__":
    main()
