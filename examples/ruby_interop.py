"""Sharing a Redis with Ruby Sidekiq, in both directions.

Ruby enqueues to Python by class name:

    Sidekiq::Client.push("class" => "ReportJob", "args" => [7], "queue" => "python")

and Python enqueues to a Ruby worker (``class HardJob; include Sidekiq::Job``)
with a :class:`~kiq.Job` naming the Ruby class.
"""

from __future__ import annotations

import logging

from kiq import Job, Kiq, Worker

log = logging.getLogger(__name__)


class ReportJob(Worker, queue="python", name="ReportJob"):
    """``name`` is the ``class`` field Ruby pushes; without it the name is ``ruby_interop.ReportJob``."""

    def perform(self, account_id: int) -> None:
        log.info("building report %d", account_id)


# Python processes work only the "python" queue; Ruby's processes work the rest.
app = Kiq(queues={"python": 10}, workers=[ReportJob])


def charge(account_id: int, cents: int) -> str:
    """Hands work to the Ruby worker ``Billing::ChargeJob`` on its queue."""
    return app.enqueue(Job("Billing::ChargeJob", [account_id, cents], queue="billing", retry=10))


if __name__ == "__main__":
    print(charge(7, 1999))
    app.run()
