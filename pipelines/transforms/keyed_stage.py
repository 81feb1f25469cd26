"""KeyedStageFn: the Beam mechanics shared by the keyed feature stages.

A keyed stage is a stateful DoFn over (key, element) pairs. Beam runs one key's elements one at a
time (on every runner), and Dataflow spreads the keys over its workers. A bundle holds elements
of one key (a Dataflow streaming work item of a stateful step) or of many (the DirectRunner); the
stage buffers them and processes them in batches of at most ``max_batch_size``, so a batch costs
one store read and one store write whatever the number of keys in it.

Fences. What a runner commits with a work item's outputs is its Beam state; what the stage writes
to Bigtable is a side effect that a failed attempt may already have made, and that an attempt
whose key moved to another worker (a zombie) may still be making. So every key's state holds a
fence: a work item reads the fence its key's last committed work item left, ``f``, and works at
``max(f + 1 ms, epoch)`` (``epoch``: when the pipeline was built, so a new job starts above
what an earlier one wrote). The stage writes its cells with the fence as their version (a read
takes each cell's newest version), gives its outputs the fence as their revision, and trusts a
cached entity state only if it was left by the attempt that committed ``f``
(pipelines/stores/window_cache.py). Two attempts of one work item share a fence and write the
same cells; every later work item of the key has a higher one, so no zombie can hide its writes.
Fences are whole milliseconds (Bigtable's timestamp granularity). An output's revision is its
key's fence plus the index of its batch within the bundle (under 1 ms): a transaction computed
twice in one bundle (by a batch and then corrected by a later one) gets two revisions in that
order, the same on every attempt of the bundle, all below the next work item's fence.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.core.completion import completion
from pipelines.transforms import gc_policy
from pipelines.transforms.parse import METRICS_NAMESPACE

__all__ = ["FENCE", "FENCE_PARAM", "FENCE_STEP_US", "KeyedStageFn", "with_token"]

FENCE = ReadModifyWriteStateSpec("fence", VarIntCoder())
FENCE_PARAM = beam.DoFn.StateParam(FENCE)
FENCE_STEP_US = 1000  # Bigtable timestamps have millisecond granularity


class KeyedStageFn(beam.DoFn):
    """Buffers a bundle of (key, element) pairs and hands them to ``flush`` in batches.

    Subclasses define ``process`` (with their state and timer parameters) calling ``accept``,
    and ``flush``, which returns the batch's outputs (values, or ``TaggedOutput``s). ``fence_of``
    gives a key's (committed fence, this attempt's fence) during ``flush``; ``attempt`` is this
    attempt's token (drawn per bundle). Every output is given the recovery token of the batch
    (local_runner.recovery), chained to the tokens of the inputs, so a message finishes only when
    what it led to reached a sink.
    """

    step = "keyed"  # the step's name in the graph (default_label) and in its dead letters

    def __init__(self, max_batch_size: int) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._max = max_batch_size
        # Fixed when the pipeline is built, the same on every worker.
        self._run_token = uuid.uuid4().hex
        self._epoch_us = time.time_ns() // 1_000_000 * FENCE_STEP_US
        self._buffer: list[tuple[str, Any]] = []
        self._fences: dict[str, tuple[int, int]] = {}
        self._batch_index = 0
        self._last_timestamp: Any = None
        self.attempt = ""
        self._gc_freezes = Metrics.counter(METRICS_NAMESPACE, "gc_freezes")

    def default_label(self) -> str:
        # The step's name in the graph: stable when the class is renamed (--update matches steps
        # by name).
        return self.step

    # -- hooks ---------------------------------------------------------------------------------

    def flush(self, batch: Sequence[tuple[str, Any]]) -> list[Any]:
        raise NotImplementedError

    def settle(self) -> None:
        """The bundle's batches all went through (its commit is the runner's business)."""

    def token(self, batch: Sequence[tuple[str, Any]], outputs: int) -> int:
        """The recovery token the outputs of ``batch`` carry (default: chained to the inputs')."""
        return completion().chain((getattr(e, "token", 0) for _, e in batch), outputs)

    def fence_of(self, key: str) -> tuple[int, int]:
        """(the fence the key's last committed work item left, this attempt's fence)."""
        return self._fences[key]

    def fences(self) -> dict[str, tuple[int, int]]:
        """Every key of this bundle: (committed fence, this attempt's fence)."""
        return dict(self._fences)

    def revision_of(self, key: str) -> int:
        """The revision of what the current batch computes for ``key``'s entities."""
        return self._fences[key][1] + min(self._batch_index, FENCE_STEP_US - 1)

    # -- Beam ----------------------------------------------------------------------------------

    def start_bundle(self) -> None:
        self._buffer = []
        self._fences = {}
        self._batch_index = 0
        self.attempt = uuid.uuid4().hex
        gc_policy.install()  # the process's full collections kept short (gc_policy)

    def accept(self, key: str, element: Any, fence: Any, timestamp: Any) -> Iterator[Any]:
        """Buffers one element; ``fence`` is the key's fence state (None: the stage keeps no
        fence, it writes nothing a zombie could spoil)."""
        if fence is not None and key not in self._fences:
            committed = fence.read() or 0
            mine = max(committed + FENCE_STEP_US, self._epoch_us)
            fence.write(mine)
            self._fences[key] = (committed, mine)
        self._buffer.append((key, element))
        self._last_timestamp = timestamp
        if len(self._buffer) >= self._max:
            batch, self._buffer = self._buffer, []
            yield from self._run(batch)

    def finish_bundle(self) -> Iterator[Any]:
        outputs = []
        if self._buffer:
            batch, self._buffer = self._buffer, []
            outputs = list(self._run(batch))
        ts = self._last_timestamp if self._last_timestamp is not None else Timestamp.now()
        for out in outputs:
            # finish_bundle has no current element: outputs carry their window explicitly.
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(
                    out.tag, WindowedValue(out.value, ts, (GlobalWindow(),))
                )
            else:
                yield WindowedValue(out, ts, (GlobalWindow(),))
        self.settle()
        if gc_policy.settle():
            self._gc_freezes.inc()

    def _run(self, batch: list[tuple[str, Any]]) -> Iterator[Any]:
        outputs = self.flush(batch)
        self._batch_index += 1
        yield from with_token(outputs, self.token(batch, len(outputs)))


def with_token(outputs: list[Any], token: int) -> list[Any]:
    """The outputs, each carrying ``token``."""
    if not token:
        return outputs
    out = []
    for o in outputs:
        if isinstance(o, beam.pvalue.TaggedOutput):
            out.append(beam.pvalue.TaggedOutput(o.tag, dataclasses.replace(o.value, token=token)))
        else:
            o.token = token
            out.append(o)
    return out
