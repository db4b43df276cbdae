"""Sharing a Redis with Ruby Sidekiq, in both directions.

Ruby enqueues to Python by class name:

    Sidekiq::Client.push("class" => "ReportJob", "args" => [7], "queue" => "python")

and Python enqueues to a Ruby worker (``class HardJob; include Sidekiq::Job``)
with a :class:`~kiq.Job` naming the Ruby class. Rails' ActiveJob classes work
both ways too: ``WelcomeMailJob.perform_later(5, locale: "de")`` runs the Python
worker named ``WelcomeMailJob`` below, and :func:`kiq.active_job` enqueues to a
Ruby ActiveJob class.
"""

from __future__ import annotations

import logging

from kiq import Job, Kiq, Worker, active_job

log = logging.getLogger(__name__)


class ReportJob(Worker, queue="python", name="ReportJob"):
    """``name`` is the ``class`` field Ruby pushes; without it the name is ``ruby_interop.ReportJob``."""

    def perform(self, account_id: int) -> None:
        log.info("building report %d", account_id)


class WelcomeMailJob(Worker, queue="python", name="WelcomeMailJob"):
    """Runs Rails' ``WelcomeMailJob.perform_later(user_id, locale: ...)``: keywords arrive as keywords."""

    def perform(self, user_id: int, locale: str = "en") -> None:
        log.info("welcome mail for %d in %s", user_id, locale)


# Python processes work only the "python" queue; Ruby's processes work the rest.
app = Kiq(queues={"python": 10}, workers=[ReportJob, WelcomeMailJob])


def charge(account_id: int, cents: int) -> str:
    """Hands work to the Ruby worker ``Billing::ChargeJob`` on its queue."""
    return app.enqueue(Job("Billing::ChargeJob", [account_id, cents], queue="billing", retry=10))


def export(account_id: int) -> str:
    """Hands work to the Rails ActiveJob class ``ExportJob`` (``perform(account_id, format:)``)."""
    return app.enqueue(active_job("ExportJob", [account_id], {"format": "csv"}, queue="exports"))


if __name__ == "__main__":
    print(charge(7, 1999), export(7))
    app.run()
