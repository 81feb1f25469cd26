"""Per-key work of the keyed stages, counted by the stages themselves.

``make bench-scaleout`` enables it in the job's process and reads, per stateful step, how many
distinct keys it saw, how many events each key carried and how much of the step's time each key
took (a flush's time shared over its events). Off by default: a production job has millions of
keys, and nothing here is sent anywhere.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

__all__ = ["KeyStats", "key_stats"]


class KeyStats:
    """Events and seconds per (step, key), in this process (thread-safe)."""

    def __init__(self) -> None:
        self.enabled = False
        self._lock = threading.Lock()
        self._events: dict[str, Counter[str]] = {}
        self._work: dict[str, list[tuple[str, float]]] = {}

    def enable(self) -> None:
        self.enabled = True

    def reset(self) -> None:
        with self._lock:
            self._events.clear()
            self._work.clear()
        self.enabled = False

    def record(self, step: str, keys: Iterable[str], seconds: float) -> None:
        """One flush of ``step`` over events of ``keys`` (one entry per event) took ``seconds``."""
        if not self.enabled:
            return
        keys = list(keys)
        if not keys:
            return
        share = seconds / len(keys)
        with self._lock:
            events = self._events.setdefault(step, Counter())
            work = self._work.setdefault(step, [])
            for key in keys:
                events[key] += 1
                work.append((key, share))

    def events(self, step: str) -> Counter[str]:
        with self._lock:
            return Counter(self._events.get(step, Counter()))

    def work(self, step: str) -> list[tuple[str, float]]:
        """Every event of ``step`` in processing order, as (key, seconds of work)."""
        with self._lock:
            return list(self._work.get(step, []))

    def steps(self) -> list[str]:
        with self._lock:
            return sorted(self._events)


_STATS = KeyStats()


def key_stats() -> KeyStats:
    """The process-wide registry (the DirectRunner runs every step in this process)."""
    return _STATS
