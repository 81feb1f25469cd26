"""Fault injection by wrapping the clients the product uses, in the worker processes only.

``install`` monkeypatches, once per worker process, the client classes the stages write through:

  Bigtable   the generated data client's ``BigtableClient.mutate_rows`` (pipelines/stores/
             bigtable.py ``_data_api``)
  Datastore  the generated client's ``DatastoreClient.commit``: the upserts and every
             transaction's commit (pipelines/transforms/sinks.py)
  Pub/Sub    ``PublisherClient.publish``: predictions and dead letters

Reads (``read_rows``, ``lookup``) and a transaction's ``begin_transaction`` and ``rollback``
change nothing that outlives the attempt, so they are left as they are.

A thread-local attempt, set by the worker around each attempt (``attempt``), lets every wrapper
log each write with the attempt that made it (``Write``: client, wall-clock start and end) and
apply the attempt's ``FaultPlan``:

  fail_after  the write happens (for a publish: Pub/Sub accepted it), then ``InjectedFailure``
              is raised, once per attempt. It is not a transient error, so the product's
              retries (pipelines.stores.retry) do not absorb it: the work item fails after its
              side effect, as when a worker is lost or its commit fails.
  zombie      the attempt's first write waits until the coordinator releases it (meanwhile the
              coordinator moved the key and the retry committed); then it writes.

The coordinator counts zombie writes from this log: writes that started after the attempt's
lease was revoked (its own records), not anything the worker reports about itself.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bench.dataflow_model.messages import (
    AFTER_BIGTABLE,
    AFTER_DATASTORE,
    AFTER_PUBLISH,
    FaultPlan,
    Write,
)

__all__ = ["HOLD_TIMEOUT_S", "InjectedFailure", "attempt", "install", "release"]

HOLD_TIMEOUT_S = 300.0  # a zombie's held write goes ahead after this even if never released


class InjectedFailure(RuntimeError):
    """The attempt fails here, after a side effect (injected by the harness)."""


@dataclass
class _Attempt:
    id: int
    plan: FaultPlan
    writes: list[Write] = field(default_factory=list)
    injected: str | None = None
    held: bool = False


_local = threading.local()
_events: dict[int, threading.Event] = {}
_events_lock = threading.Lock()
_process: dict[str, Any] = {"worker": -1, "on_hold": None, "installed": False}


def _event(attempt_id: int) -> threading.Event:
    with _events_lock:
        return _events.setdefault(attempt_id, threading.Event())


def release(attempt_id: int) -> None:
    """Lets a held zombie write go ahead (the coordinator says the key's retry committed)."""
    _event(attempt_id).set()


@contextmanager
def attempt(attempt_id: int, plan: FaultPlan) -> Iterator[_Attempt]:
    """The current thread runs this attempt: its writes are logged and its plan applied."""
    current = _Attempt(attempt_id, plan)
    _local.attempt = current
    try:
        yield current
    finally:
        _local.attempt = None
        with _events_lock:
            _events.pop(attempt_id, None)


def _before_write() -> float:
    current: _Attempt | None = getattr(_local, "attempt", None)
    if current is not None and current.plan.zombie and not current.held:
        current.held = True
        on_hold = _process["on_hold"]
        if on_hold is not None:
            on_hold(current.id)
        _event(current.id).wait(HOLD_TIMEOUT_S)
    return time.time()


def _after_write(kind: str, started: float, size: int) -> None:
    current: _Attempt | None = getattr(_local, "attempt", None)
    if current is None:
        return
    current.writes.append(Write(current.id, _process["worker"], kind, started, time.time(), size))
    if current.plan.fail_after == kind and current.injected is None:
        current.injected = kind
        raise InjectedFailure(f"injected: attempt {current.id} fails after its {kind} write")


def _size(request: Any, field_name: str) -> int:
    if request is None:
        return 0
    if isinstance(request, dict):
        return len(request.get(field_name, ()))
    return len(getattr(request, field_name, ()))


def install(
    worker: int,
    on_hold: Callable[[int], None] | None,
    extra: tuple[tuple[str, str, str], ...] = (),
) -> None:
    """Wraps the client classes in this process (idempotent). ``on_hold(attempt_id)`` is told
    when a zombie's write starts waiting. ``extra``: more write methods to wrap, as
    ("module:Class", method, kind) (the unit tests' toy store)."""
    _process["worker"] = worker
    _process["on_hold"] = on_hold
    if _process["installed"]:
        return
    _process["installed"] = True
    from google.cloud.bigtable_v2.services.bigtable import BigtableClient
    from google.cloud.datastore_v1.services.datastore import DatastoreClient
    from google.cloud.pubsub_v1 import PublisherClient

    mutate_rows = BigtableClient.mutate_rows

    def wrapped_mutate_rows(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        started = _before_write()
        responses = list(mutate_rows(self, *args, **kwargs))  # the rows are written now
        request = kwargs.get("request", args[0] if args else None)
        _after_write(AFTER_BIGTABLE, started, _size(request, "entries"))
        return iter(responses)

    publish = PublisherClient.publish

    def wrapped_publish(self: Any, topic: Any, data: Any, *args: Any, **kwargs: Any) -> Any:
        started = _before_write()
        future = publish(self, topic, data, *args, **kwargs)
        current: _Attempt | None = getattr(_local, "attempt", None)
        if current is not None and current.plan.fail_after == AFTER_PUBLISH:
            future.result(timeout=60)  # the message is out before the attempt fails
        _after_write(AFTER_PUBLISH, started, 1)
        return future

    BigtableClient.mutate_rows = wrapped_mutate_rows
    PublisherClient.publish = wrapped_publish
    _wrap(DatastoreClient, "commit", AFTER_DATASTORE, "mutations")
    for path, method, kind in extra:
        module, _, name = path.partition(":")
        _wrap(getattr(importlib.import_module(module), name), method, kind, "")


def _wrap(cls: Any, method: str, kind: str, size_field: str) -> None:
    """Wraps a plain write method: the write happens, then is logged (and the plan applied)."""
    original = getattr(cls, method)

    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = _before_write()
        response = original(self, *args, **kwargs)
        request = kwargs.get("request", args[0] if args else None)
        _after_write(kind, started, _size(request, size_field) if size_field else 1)
        return response

    setattr(cls, method, wrapped)
