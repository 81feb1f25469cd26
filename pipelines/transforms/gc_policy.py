"""Keeps CPython's full garbage collections from stalling a streaming worker.

A worker's window caches hold millions of small objects (cells, summaries, their dicts), all
tracked by the cyclic collector. CPython runs a full collection each time the objects that
survived into the oldest generation have grown by a quarter, and a full collection scans every
one of them: measured in `make replay-eval`'s job, 0.5 s at 1.9 million objects, more as the
caches fill, with the one executor thread stopped meanwhile (the latency tail: every prediction
in flight waits). Almost nothing they find is garbage (a handful of objects per collection):
the caches free their cells by reference counting when they evict them.

So after a full collection that took ``SLOW_S`` or more, the next bundle boundary moves
everything alive to the permanent generation (``gc.freeze()``), which later collections skip.
Objects frozen that later become garbage are still freed by reference counting; only reference
cycles among them are kept (at most the few objects a bundle in flight holds in cycles, per
freeze). Full collections then scan only what came after the last freeze: each stays under about
``SLOW_S``. One policy per process (Beam runs many DoFn instances in one SDK process).
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

__all__ = ["SLOW_S", "install", "settle"]

SLOW_S = 0.05  # a full collection this long (or longer) freezes what is alive

_lock = threading.Lock()
_installed = False
_started = 0.0
_slow = False


def _callback(phase: str, info: dict[str, Any]) -> None:
    global _started, _slow
    if info.get("generation") != 2:
        return
    if phase == "start":
        _started = time.perf_counter()
    elif time.perf_counter() - _started >= SLOW_S:
        _slow = True


def install() -> None:
    """Watches this process's full collections (once per process; later calls do nothing)."""
    global _installed
    if _installed:
        return
    with _lock:
        if not _installed:
            gc.callbacks.append(_callback)
            _installed = True


def settle() -> bool:
    """At a bundle boundary: freezes what is alive if the last full collection was slow.
    Returns whether it froze."""
    global _slow
    if not _slow:
        return False
    with _lock:
        if not _slow:
            return False
        _slow = False
        # Not from the callback: the collector may still be on the stack there.
        gc.freeze()
        return True
