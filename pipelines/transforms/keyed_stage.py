"""KeyedStageFn: the Beam mechanics shared by the keyed feature stages.

A keyed stage is a stateful DoFn over (key, element) pairs. Beam runs one key's elements one at a
time (on every runner), and Dataflow spreads the keys over its workers. Within a bundle, which
holds elements of many keys, the stage buffers the elements and processes them in batches of at
most ``max_batch_size``, so a batch costs one store read and one store write whatever the number
of keys in it.

Each key's Beam state holds a generation number, advanced by every bundle that touches the key.
A stage that mirrors its keys' store rows in memory (pipelines/stores/window_cache.py) records the
generation it mirrors; when the runner moved the key to another worker and back, or retried a
bundle, the generations differ and the key's rows are read again.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.core.completion import completion
from pipelines.transforms.key_stats import key_stats

__all__ = ["GENERATION", "GENERATION_PARAM", "KeyedStageFn", "monotonic_us", "with_token"]

GENERATION = ReadModifyWriteStateSpec("generation", VarIntCoder())
GENERATION_PARAM = beam.DoFn.StateParam(GENERATION)

_LAST_US = [0]


def monotonic_us() -> int:
    """Wall-clock µs, strictly increasing within the process even if the clock steps back."""
    now = max(time.time_ns() // 1000, _LAST_US[0] + 1)
    _LAST_US[0] = now
    return now


class KeyedStageFn(beam.DoFn):
    """Buffers a bundle of (key, element) pairs and hands them to ``flush`` in batches.

    Subclasses define ``process`` (with their state and timer parameters) calling ``accept``,
    and ``flush``, which returns the batch's outputs (values, or ``TaggedOutput``s). Every output
    is given the recovery token of the batch (local_runner.recovery), chained to the tokens of the
    inputs, so a message finishes only when what it led to reached a sink.
    """

    step = "keyed"  # the label key statistics are recorded under (pipelines.transforms.key_stats)

    def __init__(self, max_batch_size: int) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._max = max_batch_size
        self._run_token = uuid.uuid4().hex  # fixed when the pipeline is built
        self._buffer: list[tuple[str, Any]] = []
        self._generations: dict[str, int] = {}
        self._last_timestamp: Any = None

    # -- hooks ---------------------------------------------------------------------------------

    def claim(self, key: str, generation: int) -> None:
        """A bundle is about to work on ``key``, whose state is at ``generation``."""

    def settle(self, generations: dict[str, int]) -> None:
        """The bundle completed: its keys are now at these generations."""

    def flush(self, batch: Sequence[tuple[str, Any]]) -> list[Any]:
        raise NotImplementedError

    def entity_of(self, element: Any) -> str:
        """The entity an element is for (what key statistics count: on Dataflow, the key)."""
        raise NotImplementedError

    def token(self, batch: Sequence[tuple[str, Any]], outputs: int) -> int:
        """The recovery token the outputs of ``batch`` carry (default: chained to the inputs')."""
        return completion().chain((getattr(e, "token", 0) for _, e in batch), outputs)

    # -- Beam ----------------------------------------------------------------------------------

    def start_bundle(self) -> None:
        self._buffer = []
        self._generations = {}

    def accept(self, key: str, element: Any, generation: Any, timestamp: Any) -> Iterator[Any]:
        """Buffers one element; ``generation`` is the key's state (None: the stage mirrors
        nothing in memory)."""
        if generation is not None and key not in self._generations:
            current = generation.read() or 0
            self.claim(key, current)
            self._generations[key] = current + 1
            generation.write(current + 1)
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
        if self._generations:
            self.settle(self._generations)

    def _run(self, batch: list[tuple[str, Any]]) -> Iterator[Any]:
        started = time.perf_counter()
        outputs = self.flush(batch)
        stats = key_stats()
        if stats.enabled:
            stats.record(
                self.step, (self.entity_of(e) for _, e in batch), time.perf_counter() - started
            )
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
