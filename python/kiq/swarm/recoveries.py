"""Dead children's jobs, waiting for a living child to recover them.

The parent never touches Redis: when a child dies it asks a living one to
recover the dead identity at once (``recover_dead`` in the core), naming the
jobs it killed the child for. The request is kept until a child says it is
done; if that child dies first, or says it could not, another one is asked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiq.swarm.children import Child

__all__ = ["Recoveries"]

#: A recovery a child could not do is asked again this much later.
RETRY = 1.0


class _Recovery:
    def __init__(self, timed_out: dict[str, float]) -> None:
        self.timed_out = timed_out
        #: The pid of the child asked to do it; None while nobody is.
        self.by: int | None = None
        self.not_before = 0.0


class Recoveries:
    """The recoveries not done yet, by dead identity."""

    def __init__(self) -> None:
        self.waiting: dict[str, _Recovery] = {}

    def add(self, identity: str, timed_out: dict[str, float]) -> None:
        """``identity`` died; ``timed_out`` (jid → hard_timeout) are the jobs it was killed for."""
        self.waiting[identity] = _Recovery(timed_out)

    def done(self, identity: str) -> None:
        self.waiting.pop(identity, None)

    def failed(self, identity: str, now: float) -> None:
        """The child asked could not (it was stopping, Redis was away): ask again soon."""
        rec = self.waiting.get(identity)
        if rec is not None:
            rec.by, rec.not_before = None, now + RETRY

    def dispatch(self, helpers: Iterable[Child], living: set[int], now: float) -> None:
        """Asks one of ``helpers`` for each recovery nobody living is doing."""
        able = list(helpers)
        if not able:
            return
        for n, (identity, rec) in enumerate(self.waiting.items()):
            if rec.by in living or now < rec.not_before:
                continue
            helper = able[n % len(able)]
            rec.by = helper.pid
            helper.channel.send("recover", identity=identity, timed_out=rec.timed_out)

    def identities(self) -> list[str]:
        """The dead identities not recovered yet."""
        return sorted(self.waiting)
