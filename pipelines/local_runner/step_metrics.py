"""The DirectRunner keeps only the first bundle's metrics of each step; make it keep them all.

Beam's local runner gives every bundle a new ``MetricsContainer`` and passes it to the executor
thread's ``StateSampler.scoped_state``, which caches its scoped states by step and state name:
the second bundle of a step gets back the first bundle's scoped state, whose container (readonly
in the compiled sampler) is the first bundle's. So every counter a DoFn increments after its
step's first bundle lands in a container that was already committed, and is lost. Measured here:
after 5 transactions through the job, ``result.metrics()`` held only ``transactions_valid`` and
``dead_letters_published`` (each step's first bundle), no ``predictions_written``.

The fix: one container per executor thread and step, reset before each bundle, so the cached
scoped state always points at the container of the bundle in flight and each bundle commits
exactly its own updates. DirectRunner-only; Dataflow has its own metrics.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["keep_every_bundles_metrics"]

_LOCK = threading.Lock()
_INSTALLED = [False]


def keep_every_bundles_metrics() -> None:
    """Replaces the MetricsContainer the DirectRunner's executor creates per bundle by one per
    (thread, step), reset for each bundle."""
    from apache_beam.metrics.execution import MetricsContainer
    from apache_beam.runners.direct import executor

    with _LOCK:
        if _INSTALLED[0]:
            return
        containers: dict[tuple[int, Any], MetricsContainer] = {}

        def container_for_bundle(step_name: Any) -> MetricsContainer:
            key = (threading.get_ident(), step_name)
            container = containers.get(key)
            if container is None:
                container = containers[key] = MetricsContainer(step_name)
            else:
                container.reset()
            return container

        executor.MetricsContainer = container_for_bundle  # type: ignore[misc,assignment]
        _INSTALLED[0] = True
