"""Testing without Redis: ``pytest examples`` (the plugin ships with kiq).

``kiq_sandbox`` is a sandboxed app; with ``kiq_app = first_worker:app`` in
your pytest configuration it would be that app itself, sandboxed.
"""

from __future__ import annotations

from first_worker import Greeter, add

from kiq import Kiq
from kiq.testing import assert_enqueued, drain, refute_enqueued


def test_greeter_job_is_enqueued_and_runs(kiq_sandbox: Kiq) -> None:
    kiq_sandbox.register(Greeter, add)
    kiq_sandbox.enqueue(Greeter.new("Ada", 1))
    kiq_sandbox.enqueue(add.new(1, 2), delay=60)
    assert_enqueued(kiq_sandbox, Greeter, args=["Ada", 1], queue="default")
    assert_enqueued(kiq_sandbox, add, delay=60)
    refute_enqueued(kiq_sandbox, Greeter, args=["Bob", 1])
    assert drain(kiq_sandbox) == 2


def test_function_workers_stay_callable() -> None:
    assert add(2, 3) == 5
