"""The part of a Beam pipeline in scope, taken from its graph and fused into stages as Dataflow
streaming fuses them.

``extract`` walks the AppliedPTransform tree of a pipeline that is built but never run and keeps
the leaf transforms under the ``keep`` labels: ParDo (Map and FlatMap are ParDos), Flatten,
Impulse and GroupByKey. ``inputs`` names composites whose output the harness feeds itself (the
Pub/Sub reads: the input bypasses Pub/Sub); everything else is pruned, and an output consumed
only by pruned transforms is dropped.

Fusion: a stage starts at a root (a fed input, an Impulse) or at a shuffle: a stateful ParDo
(one with state or timer parameters: its input is keyed and committed per key) or a
GroupByKey. Stateless ParDos and Flattens downstream of a stage's entry are fused into it until
the next shuffle; a step reachable from several stages (behind a Flatten of their outputs) runs
in each of them, as Dataflow's flatten unzipping does.

Each ParDo is serialized as Beam ships it to workers (``apache_beam.internal.pickler``): its
DoFn, args, kwargs and output windowing, built once here, so a value fixed when the graph was
built (a run token) is the same in every worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam import coders
from apache_beam.coders.coders import Coder
from apache_beam.internal import pickler
from apache_beam.transforms import userstate

__all__ = ["COLLECTED", "Graph", "Stage", "Step", "extract"]

PARDO, FLATTEN, IMPULSE, GBK = "pardo", "flatten", "impulse", "gbk"
SOURCE, STATEFUL = "source", "stateful"  # stage kinds besides IMPULSE and GBK
COLLECTED = -1  # the exit of a collected PCollection (kept by the coordinator when committed)


@dataclass(frozen=True)
class Step:
    """One leaf transform: what a worker needs to run it."""

    name: str
    kind: str  # PARDO, FLATTEN, IMPULSE, GBK
    inputs: tuple[str, ...]  # PCollection ids
    outputs: dict[str | None, str]  # output tag -> PCollection id (main tag None)
    payload: bytes = b""  # ParDo: pickler.dumps((fn, args, kwargs, windowing))
    state_names: tuple[str, ...] = ()
    timer_domains: dict[str, str] = field(default_factory=dict)  # timer family -> domain

    @property
    def stateful(self) -> bool:
        return bool(self.state_names or self.timer_domains)


@dataclass(frozen=True)
class Stage:
    """A fused stage: its entry, the steps fused into it, and where its outputs go."""

    id: int
    name: str
    kind: str  # SOURCE, IMPULSE, STATEFUL, GBK
    entry: str  # the entry step (or, for a fed input, the PCollection id it feeds)
    input: str  # the PCollection id the stage reads (its shuffle, or the fed input)
    steps: tuple[str, ...]  # fused steps in topological order (the entry first, if a step)
    # PCollection id consumed by another stage's entry -> that stage (COLLECTED: kept)
    exits: dict[str, int]

    @property
    def keyed(self) -> bool:
        return self.kind in (STATEFUL, GBK)


@dataclass
class Graph:
    """The extracted steps and stages; coders are pickled (``coder(pcoll)`` unpickles)."""

    steps: dict[str, Step]
    stages: list[Stage]
    consumers: dict[str, list[str]]  # PCollection id -> consuming steps in scope
    coders: dict[str, bytes]  # PCollection id -> pickled element coder
    window_coders: dict[str, bytes]  # PCollection id -> pickled window coder
    inputs: dict[str, int]  # fed input name -> its stage id
    collected: dict[str, str] = field(default_factory=dict)  # PCollection id -> step name
    _unpickled: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def coder(self, pcoll: str) -> Coder:
        key = f"c:{pcoll}"
        if key not in self._unpickled:
            self._unpickled[key] = pickler.loads(self.coders[pcoll])
        return self._unpickled[key]

    def window_coder(self, pcoll: str) -> Coder:
        key = f"w:{pcoll}"
        if key not in self._unpickled:
            self._unpickled[key] = pickler.loads(self.window_coders[pcoll])
        return self._unpickled[key]

    def key_coder(self, pcoll: str) -> Coder:
        """The key coder of a keyed PCollection (a KV coder's first component; else the
        deterministic coder of any value)."""
        coder = self.coder(pcoll)
        if isinstance(coder, coders.TupleCoder) and len(coder.coders()) == 2:
            return coder.coders()[0]
        return coders.FastPrimitivesCoder()

    def stage_of_input(self, name: str) -> Stage:
        return self.stages[self.inputs[name]]

    def upstream(self, stage_id: int) -> set[int]:
        """The stages whose outputs reach ``stage_id`` (transitively), itself excluded."""
        parents: dict[int, set[int]] = {s.id: set() for s in self.stages}
        for s in self.stages:
            for target in s.exits.values():
                if target != COLLECTED:
                    parents[target].add(s.id)
        seen: set[int] = set()
        todo = list(parents[stage_id])
        while todo:
            sid = todo.pop()
            if sid not in seen:
                seen.add(sid)
                todo.extend(parents[sid])
        seen.discard(stage_id)
        return seen


def _in_scope(label: str, prefixes: Iterable[str]) -> bool:
    return any(label == p or label.startswith(p + "/") for p in prefixes)


def _pcoll_id(pcoll: Any, ids: dict[int, str]) -> str:
    if id(pcoll) not in ids:
        producer = pcoll.producer.full_label if pcoll.producer else "?"
        ids[id(pcoll)] = f"{producer}.{pcoll.tag}"
    return ids[id(pcoll)]


def _element_coder(pcoll: Any) -> Coder:
    return coders.registry.get_coder(pcoll.element_type)


def extract(
    pipeline: beam.Pipeline,
    keep: Iterable[str],
    inputs: Mapping[str, str] | None = None,
    collect: Iterable[str] = (),
) -> Graph:
    """The leaf transforms of ``pipeline`` under the ``keep`` labels, fused into stages.

    ``inputs`` maps a name to the label of a composite whose (single) output the harness feeds
    (e.g. {"transactions": "ReadTransactions"}); those composites are not run. ``collect``
    names steps whose main output the coordinator keeps, once committed (for tests)."""
    keep = tuple(keep)
    fed_inputs = dict(inputs or {})
    ids: dict[int, str] = {}
    nodes: list[Any] = []
    fed: dict[str, str] = {}  # PCollection id -> input name
    pcolls: dict[str, Any] = {}

    class _Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node: Any) -> None:
            for name, label in fed_inputs.items():
                if node.full_label == label:
                    (out,) = node.outputs.values()
                    fed[_pcoll_id(out, ids)] = name
                    pcolls[_pcoll_id(out, ids)] = out

        def visit_transform(self, node: Any) -> None:
            if _in_scope(node.full_label, keep):
                nodes.append(node)

    pipeline.visit(_Visitor())
    missing = set(fed_inputs) - set(fed.values())
    if missing:
        raise ValueError(f"no composite for the inputs {sorted(missing)} in the pipeline")

    steps: dict[str, Step] = {}
    for node in nodes:
        for pc in [*node.inputs, *node.outputs.values()]:
            if isinstance(pc, beam.pvalue.PCollection):
                pcolls[_pcoll_id(pc, ids)] = pc
        steps[node.full_label] = _step(node, ids)
    consumers: dict[str, list[str]] = {}
    for step in steps.values():
        for pc in step.inputs:
            consumers.setdefault(pc, []).append(step.name)
    for step in steps.values():
        for pc in step.inputs:
            if pc not in fed and not any(pc in s.outputs.values() for s in steps.values()):
                raise ValueError(f"{step.name} reads {pc}, produced outside the scope")

    # Stage entries: fed inputs, Impulses, shuffles.
    entries: list[tuple[str, str, str]] = []  # (kind, entry, input pcoll)
    for pc, _name in fed.items():
        entries.append((SOURCE, pc, pc))
    for step in steps.values():
        if step.kind == IMPULSE:
            entries.append((IMPULSE, step.name, ""))
        elif step.kind == GBK or (step.kind == PARDO and step.stateful):
            if len(step.inputs) != 1:
                raise ValueError(f"{step.name}: a shuffle reads one PCollection")
            entries.append((GBK if step.kind == GBK else STATEFUL, step.name, step.inputs[0]))
    shuffle_of = {entry: i for i, (kind, entry, _) in enumerate(entries) if kind in (GBK, STATEFUL)}
    collected = {steps[name].outputs[None]: name for name in collect}

    stages: list[Stage] = []
    for i, (kind, entry, input_pc) in enumerate(entries):
        fused: list[str] = []
        exits: dict[str, int] = {}
        frontier = [entry] if kind in (IMPULSE, GBK, STATEFUL) else []
        pending_pcs = [input_pc] if kind == SOURCE else []
        order: list[str] = []
        while frontier or pending_pcs:
            if frontier:
                name = frontier.pop(0)
                if name in fused:
                    continue
                fused.append(name)
                order.append(name)
                pending_pcs.extend(steps[name].outputs.values())
                continue
            pc = pending_pcs.pop(0)
            if pc in collected:
                exits[pc] = COLLECTED
            for consumer in consumers.get(pc, []):
                if consumer in shuffle_of:
                    exits[pc] = shuffle_of[consumer]
                elif consumer not in fused:
                    frontier.append(consumer)
        label = fed.get(entry, entry)
        stages.append(
            Stage(i, label, kind, entry, input_pc, tuple(_topological(order, steps)), exits)
        )

    element_coders = {pc: pickler.dumps(_element_coder(p)) for pc, p in pcolls.items()}
    window_coders = {
        pc: pickler.dumps(p.windowing.windowfn.get_window_coder()) for pc, p in pcolls.items()
    }
    return Graph(
        steps,
        stages,
        consumers,
        element_coders,
        window_coders,
        {fed[s.entry]: s.id for s in stages if s.kind == SOURCE},
        collected,
    )


def _step(node: Any, ids: dict[int, str]) -> Step:
    transform = node.transform
    inputs = tuple(
        _pcoll_id(pc, ids) for pc in node.inputs if isinstance(pc, beam.pvalue.PCollection)
    )
    outputs = {tag: _pcoll_id(pc, ids) for tag, pc in node.outputs.items()}
    if isinstance(transform, beam.ParDo):
        if transform.side_inputs:
            raise NotImplementedError(f"{node.full_label}: side inputs are not modelled")
        state_specs, timer_specs = userstate.get_dofn_specs(transform.fn)
        main = node.outputs.get(None) or next(iter(node.outputs.values()))
        payload = pickler.dumps((transform.fn, transform.args, transform.kwargs, main.windowing))
        return Step(
            node.full_label,
            PARDO,
            inputs,
            outputs,
            payload,
            tuple(sorted(s.name for s in state_specs)),
            {t.name: t.time_domain for t in timer_specs},
        )
    if isinstance(transform, beam.Flatten):
        return Step(node.full_label, FLATTEN, inputs, outputs)
    if isinstance(transform, beam.Impulse):
        return Step(node.full_label, IMPULSE, inputs, outputs)
    if isinstance(transform, beam.GroupByKey):
        return Step(node.full_label, GBK, inputs, outputs)
    raise NotImplementedError(f"{node.full_label}: {type(transform).__name__} is not modelled")


def _topological(order: list[str], steps: dict[str, Step]) -> list[str]:
    """``order`` sorted so that every step comes after the steps of this stage it reads from."""
    produced_by = {pc: name for name in order for pc in steps[name].outputs.values()}
    done: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for pc in steps[name].inputs:
            if pc in produced_by:
                visit(produced_by[pc])
        done.append(name)

    for name in order:
        visit(name)
    return done
