"""Queues that share one set of threads: Sidekiq 7's capsules.

``Kiq(queues={"critical": 10, "default": 25})`` gives each queue threads of
its own. A :class:`Capsule` instead serves several queues with one pool of
threads and one fetcher, in Sidekiq's fetch order::

    Kiq(queues=[Capsule(["critical", "default"], concurrency=25)])        # strict
    Kiq(queues=[Capsule({"critical": 3, "default": 1}, concurrency=25)])  # weighted
    Kiq(queues=[Capsule(["critical,3", "default,1"], concurrency=25)])    # the same, Sidekiq's spelling

Strict (no weights): each fetch empties ``critical`` before it takes from
``default``, so a busy ``critical`` starves ``default``. Weighted: each fetch
takes from the queues in a random order where a queue comes first with a
chance in proportion to its weight (all weights 1: Sidekiq's "random" mode).
A fetch takes up to the capsule's free slots at once, so the order holds per
fetch, not per job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kiq.errors import ConfigError

__all__ = ["Capsule"]


def _weight(queue: str, w: object) -> int:
    if isinstance(w, bool) or not isinstance(w, int) or w < 0:
        raise ConfigError(f"queue {queue!r} needs an int weight >= 0, not {w!r}")
    return w


class Capsule:
    """Queues sharing ``concurrency`` threads, fetched strictly in order or by weight.

    Args:
        queues: queue names in strict order (each may be Sidekiq's
            ``"name,weight"``), or a mapping of queue name to weight.
        concurrency: the most jobs of these queues run at once.
    """

    __slots__ = ("concurrency", "queues")

    queues: tuple[tuple[str, int], ...]
    concurrency: int

    def __init__(self, queues: Sequence[str] | Mapping[str, int], concurrency: int) -> None:
        pairs: list[tuple[str, int]] = []
        if isinstance(queues, Mapping):
            pairs = [(name, _weight(name, w)) for name, w in queues.items()]
        elif isinstance(queues, Sequence) and not isinstance(queues, (str, bytes)):
            for q in queues:
                if not isinstance(q, str):
                    raise ConfigError(f"a capsule's queues must be str, not {q!r}")
                name, comma, w = q.partition(",")
                if comma and not w.strip().isdigit():
                    raise ConfigError(f"queue {q!r}: the weight after the comma must be an int >= 0")
                pairs.append((name.strip(), int(w) if comma else 0))
        else:
            raise ConfigError(f"a capsule's queues must be a list of names or a mapping of name to weight, "
                              f"not {queues!r}")
        if not pairs:
            raise ConfigError("a capsule must name at least one queue")
        names = [n for n, _ in pairs]
        for n in names:
            if not isinstance(n, str) or not n:
                raise ConfigError(f"queue names must be non-empty str, not {n!r}")
        if len(set(names)) != len(names):
            raise ConfigError(f"a capsule lists a queue twice: {names}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"capsule {','.join(names)!r} needs an int concurrency >= 1, not {concurrency!r}")
        object.__setattr__(self, "queues", tuple(pairs))
        object.__setattr__(self, "concurrency", concurrency)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Capsule is immutable")

    @property
    def name(self) -> str:
        """The queue names, comma-separated (as the Web UI shows the capsule)."""
        return ",".join(n for n, _ in self.queues)

    @property
    def mode(self) -> str:
        """Sidekiq's name for the fetch order: ``strict``, ``random`` or ``weighted``."""
        weights = [w for _, w in self.queues]
        if all(w == 0 for w in weights):
            return "strict"
        return "random" if all(w == 1 for w in weights) else "weighted"

    def with_concurrency(self, concurrency: int) -> Capsule:
        """The same queues and weights with another concurrency."""
        return Capsule(dict(self.queues), concurrency)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Capsule) and (self.queues, self.concurrency) == (other.queues, other.concurrency)

    def __hash__(self) -> int:
        return hash((self.queues, self.concurrency))

    def __repr__(self) -> str:
        queues = dict(self.queues) if self.mode != "strict" else [n for n, _ in self.queues]
        return f"Capsule({queues!r}, concurrency={self.concurrency})"
