"""One thread's instance of a fused stage, and one attempt of a work item on it.

As Python's SDK harness runs a bundle: every ParDo of the stage is a DoFn instance deserialized
from the graph's payload (one instance per thread and step, ``setup`` once), driven by Beam's own
``apache_beam.runners.common.DoFnRunner`` (``start_bundle``, ``process``, ``on_timer``,
``finish_bundle``; ``teardown`` when the instance is discarded), with the SDK harness's user
state context (``FnApiUserStateContext``: ReadModifyWrite, Bag, Combining and Set state) over a
state handler that holds the attempt's copy of its keys' state as bytes, encoded by each state's
declared coder. Timers are written by the harness's ``OutputTimer`` through the timer coder.

Nothing is committed here: the attempt returns its outputs (encoded by the PCollection's coder),
its state changes and its timers; the coordinator applies them only if the attempt succeeds and
still holds its lease. After a failure the instance is discarded (torn down), as the SDK harness
discards a failed bundle's processor; the next attempt on the thread sets up new DoFns.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Any

from apache_beam import coders
from apache_beam.coders import coder_impl
from apache_beam.internal import pickler
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.common import DoFnRunner, Receiver
from apache_beam.runners.worker.bundle_processor import FnApiUserStateContext, TimerInfo
from apache_beam.runners.worker.data_plane import ClosableOutputStream
from apache_beam.transforms import userstate
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from bench.dataflow_model.graph import (
    COLLECTED,
    FLATTEN,
    GBK,
    IMPULSE,
    PARDO,
    SOURCE,
    STATEFUL,
    Graph,
)
from bench.dataflow_model.messages import TimerChange, WorkItem

__all__ = ["AttemptState", "StageInstance", "windowed_coder"]


def windowed_coder(graph: Graph, pcoll: str) -> coders.Coder:
    """How an element of ``pcoll`` travels between stages: value, timestamp, windows."""
    return coders.WindowedValueCoder(graph.coder(pcoll), graph.window_coder(pcoll))


class _Done:
    """A state request that completed at once (the SDK's handler returns futures)."""

    def get(self) -> None:
        return None


class AttemptState:
    """The SDK's state handler interface over one attempt's copy of its keys' state.

    Each state cell (a ``StateKey``: transform, state id, window, key) is one blob of elements,
    each encoded nested by the cell's coder, as the Fn API's state protocol carries them."""

    def __init__(self) -> None:
        self._cells: dict[bytes, bytes] = {}
        self._dirty: set[bytes] = set()

    def begin(self, cells: dict[bytes, bytes]) -> None:
        self._cells = dict(cells)
        self._dirty = set()

    def blocking_get(self, state_key: Any, coder: Any) -> list[Any]:
        blob = self._cells.get(state_key.SerializeToString(deterministic=True), b"")
        stream = coder_impl.create_InputStream(blob)
        out = []
        while stream.size() > 0:
            out.append(coder.decode_from_stream(stream, True))
        return out

    def extend(self, state_key: Any, coder: Any, elements: Any) -> _Done:
        out = coder_impl.create_OutputStream()
        for element in elements:
            coder.encode_to_stream(element, out, True)
        key = state_key.SerializeToString(deterministic=True)
        self._cells[key] = self._cells.get(key, b"") + out.get()
        self._dirty.add(key)
        return _Done()

    def clear(self, state_key: Any) -> _Done:
        key = state_key.SerializeToString(deterministic=True)
        self._cells.pop(key, None)
        self._dirty.add(key)
        return _Done()

    def changes(self) -> dict[bytes, dict[bytes, bytes | None]]:
        """The cells this attempt changed, by encoded key (None: cleared)."""
        out: dict[bytes, dict[bytes, bytes | None]] = defaultdict(dict)
        for key in self._dirty:
            owner = beam_fn_api_pb2.StateKey.FromString(key).bag_user_state.key
            out[owner][key] = self._cells.get(key)
        return dict(out)


class _NoReceiver(Receiver):
    """An output nobody in scope consumes (pruned)."""

    def receive(self, windowed_value: WindowedValue) -> None:
        return None


class _Tagged(dict[Any, Receiver]):
    def __missing__(self, tag: Any) -> Receiver:
        return _NoReceiver()


class _FanOut(Receiver):
    """Delivers an element of one PCollection to its consumers in the stage and to the stage
    exit that reads it (another stage's shuffle)."""

    def __init__(self, instance: StageInstance, pcoll: str) -> None:
        self._instance = instance
        self._pcoll = pcoll

    def receive(self, windowed_value: WindowedValue) -> None:
        self._instance.deliver(self._pcoll, windowed_value)


class StageInstance:
    """One thread's DoFn instances of a stage, set up once, run one attempt at a time."""

    def __init__(self, graph: Graph, stage_id: int) -> None:
        self.graph = graph
        self.stage = graph.stages[stage_id]
        self.state = AttemptState()
        self._runners: dict[str, DoFnRunner] = {}
        self._fns: dict[str, Any] = {}
        self._contexts: dict[str, FnApiUserStateContext] = {}
        self._timer_streams: dict[str, ClosableOutputStream] = {}
        self._outputs: list[tuple[int, bytes, bytes, int]] = []
        in_stage = set(self.stage.steps)
        self._targets: dict[str, list[str]] = {
            pc: [c for c in consumers if c in in_stage and c != self.stage.entry]
            for pc, consumers in graph.consumers.items()
        }
        for name in self.stage.steps:
            step = graph.steps[name]
            if step.kind != PARDO:
                continue
            fn, args, kwargs, windowing = pickler.loads(step.payload)
            receivers = _Tagged({tag: _FanOut(self, pc) for tag, pc in step.outputs.items()})
            context = None
            if step.stateful:
                (input_pc,) = step.inputs
                context = FnApiUserStateContext(
                    self.state,  # type: ignore[arg-type]
                    name,
                    graph.key_coder(input_pc),
                    graph.window_coder(input_pc),
                )
                self._contexts[name] = context
            self._fns[name] = fn
            self._runners[name] = DoFnRunner(
                fn,
                args,
                kwargs,
                [],
                windowing,
                tagged_receivers=receivers,
                step_name=name,
                user_state_context=context,
                transform_id=name,
            )
        for name in self.stage.steps:
            if name in self._runners:
                self._runners[name].setup()

    # -- one attempt ---------------------------------------------------------------------------

    def run(self, item: WorkItem) -> tuple[list[Any], dict[bytes, Any], list[TimerChange], float]:
        """Runs one attempt; returns (outputs, state changes, timer changes, seconds). Raises
        what the DoFns raise (the attempt failed; discard this instance)."""
        started = time.perf_counter()
        self.state.begin(item.state)
        self._outputs = []
        for name, context in self._contexts.items():
            for family, _ in self._timer_specs(name).items():
                stream = ClosableOutputStream()
                self._timer_streams[f"{name}\0{family}"] = stream
                context.add_timer_info(
                    family, TimerInfo(self._timer_coder(name).get_impl(), stream)
                )
        for name in self.stage.steps:
            if name in self._runners:
                self._runners[name].start()
        self._enter(item)
        for name in self.stage.steps:
            if name in self._runners:
                self._runners[name].finish()
        for context in self._contexts.values():
            context.commit()
            context.reset()
        timers = self._timer_changes()
        return self._outputs, self.state.changes(), timers, time.perf_counter() - started

    def teardown(self) -> None:
        for runner in self._runners.values():
            with contextlib.suppress(Exception):  # a failed instance is discarded anyway
                runner.teardown()

    def _enter(self, item: WorkItem) -> None:
        stage, graph = self.stage, self.graph
        if stage.kind == IMPULSE:
            (out,) = graph.steps[stage.entry].outputs.values()
            self.deliver(out, WindowedValue(b"", MIN_TIMESTAMP, (GlobalWindow(),)))
            return
        coder = windowed_coder(graph, stage.input)
        for _, encoded in item.elements:
            values = [coder.decode(e) for e in encoded]
            if stage.kind == SOURCE:
                for wv in values:
                    self.deliver(stage.input, wv)
            elif stage.kind == STATEFUL:
                for wv in values:
                    self._runners[stage.entry].process(wv)
            elif stage.kind == GBK:
                self._group(values)
        if item.timers:
            fn = self._fns[stage.entry]
            specs = {s.name: s for s in userstate.get_dofn_specs(fn)[1]}
            coder_of = self._timer_coder(stage.entry)
            for _, family, encoded_timer in item.timers:
                timer = coder_of.decode(encoded_timer)
                self._runners[stage.entry].process_user_timer(
                    specs[family],
                    timer.user_key,
                    timer.windows[0],
                    timer.fire_timestamp,
                    timer.paneinfo,
                    timer.dynamic_timer_tag,
                )

    def _group(self, values: list[WindowedValue]) -> None:
        """A GroupByKey's pane: the work item's values of one key, per window (fired at once:
        windows' triggers are not modelled)."""
        (out,) = self.graph.steps[self.stage.entry].outputs.values()
        by_window: dict[Any, list[Any]] = defaultdict(list)
        key = None
        for wv in values:
            key = wv.value[0]
            for window in wv.windows:
                by_window[window].append(wv.value[1])
        for window, grouped in by_window.items():
            self.deliver(out, WindowedValue((key, grouped), window.max_timestamp(), (window,)))

    # -- plumbing ------------------------------------------------------------------------------

    def deliver(self, pcoll: str, wv: WindowedValue) -> None:
        """An element of ``pcoll``: to its consumers in the stage, and out of the stage if
        another stage's shuffle reads it."""
        for consumer in self._targets.get(pcoll, ()):
            step = self.graph.steps[consumer]
            if step.kind == PARDO:
                self._runners[consumer].process(wv)
            elif step.kind == FLATTEN:
                (out,) = step.outputs.values()
                self.deliver(out, wv)
        target = self.stage.exits.get(pcoll)
        if target == COLLECTED:
            self._outputs.append(
                (target, pcoll.encode(), windowed_coder(self.graph, pcoll).encode(wv), 0)
            )
        elif target is not None:
            key = b""
            if self.graph.stages[target].keyed:
                key = self.graph.key_coder(pcoll).encode_nested(wv.value[0])
            encoded = windowed_coder(self.graph, pcoll).encode(wv)
            self._outputs.append((target, key, encoded, int(wv.timestamp.micros)))

    def _timer_specs(self, name: str) -> dict[str, Any]:
        return {s.name: s for s in userstate.get_dofn_specs(self._fns[name])[1]}

    def _timer_coder(self, name: str) -> coders.Coder:
        (input_pc,) = self.graph.steps[name].inputs
        return coders.coders._TimerCoder(
            self.graph.key_coder(input_pc), self.graph.window_coder(input_pc)
        )

    def _timer_changes(self) -> list[TimerChange]:
        changes = []
        for stream_key, stream in self._timer_streams.items():
            name, family = stream_key.split("\0")
            (input_pc,) = self.graph.steps[name].inputs
            key_coder = self.graph.key_coder(input_pc)
            window_coder = self.graph.window_coder(input_pc)
            coder = self._timer_coder(name)
            impl = coder.get_impl()
            raw = coder_impl.create_InputStream(stream.get())
            while raw.size() > 0:
                timer = impl.decode_from_stream(raw, True)
                changes.append(
                    TimerChange(
                        key_coder.encode_nested(timer.user_key),
                        family,
                        timer.dynamic_timer_tag,
                        window_coder.encode(timer.windows[0]),
                        bool(timer.clear_bit),
                        0 if timer.clear_bit else int(timer.fire_timestamp.micros),
                        0 if timer.hold_timestamp is None else int(timer.hold_timestamp.micros),
                        coder.encode(timer),
                    )
                )
        self._timer_streams = {}
        return changes
