"""Worker processes: W SDK processes (multiprocessing, spawn), each running T threads.

A process is what a Dataflow SDK harness process is to the product: its own module globals,
process-wide caches and clients (the product's ``process_shared`` objects exist once per
process, naturally), the wrapped clients of ``faults``. Each thread runs one attempt at a time,
with its own instance of each stage (``bundle.StageInstance``: one DoFn instance per thread and
step, set up at its first attempt, torn down after a failure or at the end).

Protocol (multiprocessing queues): the coordinator puts ``("item", WorkItem)``,
``("release", attempt id)`` and ``("stop",)`` on the worker's inbox; the worker puts
``("ready", worker)``, ``("held", attempt id, worker)`` and ``("result", AttemptResult)`` on the
shared outbox.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import traceback
from typing import Any

from bench.dataflow_model import faults
from bench.dataflow_model.bundle import StageInstance
from bench.dataflow_model.messages import AttemptResult, WorkItem

__all__ = ["worker_main"]

_LOGGER = logging.getLogger(__name__)


def _run_one(instances: dict[int, StageInstance], graph: Any, item: WorkItem, worker: int) -> Any:
    with faults.attempt(item.attempt_id, item.plan) as current:
        try:
            instance = instances.get(item.stage_id)
            if instance is None:
                instance = instances[item.stage_id] = StageInstance(graph, item.stage_id)
            outputs, state, timers, seconds = instance.run(item)
        except Exception as exc:  # any failure fails the attempt, as on a runner
            broken = instances.pop(item.stage_id, None)
            if broken is not None:
                broken.teardown()
            injected = current.injected if isinstance(exc, faults.InjectedFailure) else None
            detail = "" if injected else traceback.format_exc(limit=8)
            return AttemptResult(
                item.attempt_id,
                worker,
                False,
                f"{type(exc).__name__}: {exc}\n{detail}".strip(),
                injected,
                writes=current.writes,
            )
        return AttemptResult(
            item.attempt_id,
            worker,
            True,
            outputs=outputs,
            state=state,
            timers=timers,
            writes=current.writes,
            seconds=seconds,
        )


def worker_main(
    worker: int,
    threads: int,
    graph_bytes: bytes,
    inbox: Any,
    outbox: Any,
    extra_writes: tuple[tuple[str, str, str], ...] = (),
    log_level: int = logging.WARNING,
) -> None:
    """The worker process: installs the client wrappers, runs ``threads`` attempt threads."""
    import pickle

    logging.basicConfig(level=log_level, format=f"%(asctime)s w{worker} %(levelname)s %(message)s")
    # Beam logs every exception a DoFn raises; the coordinator records each failed attempt.
    logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    faults.install(
        worker, lambda attempt_id: outbox.put(("held", attempt_id, worker)), extra_writes
    )
    graph = pickle.loads(graph_bytes)
    local: queue.Queue[WorkItem | None] = queue.Queue()

    def thread_main() -> None:
        instances: dict[int, StageInstance] = {}
        while True:
            item = local.get()
            if item is None:
                break
            outbox.put(("result", _run_one(instances, graph, item, worker)))
        for instance in instances.values():
            instance.teardown()

    pool = [threading.Thread(target=thread_main, name=f"w{worker}-t{i}") for i in range(threads)]
    for thread in pool:
        thread.start()
    outbox.put(("ready", worker))
    while True:
        message = inbox.get()
        if message[0] == "item":
            local.put(message[1])
        elif message[0] == "release":
            faults.release(message[1])
        elif message[0] == "stop":
            break
    for _ in pool:
        local.put(None)
    for thread in pool:
        thread.join()
    outbox.put(("stopped", worker))
