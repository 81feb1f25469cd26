"""The Dataflow runner model of bench/dataflow_model on toy pipelines (no emulators).

Worker processes are real (spawned), so the toys live in this module: a worker imports it to
unpickle them. The toy store is a directory of files, written through ``ToyStore.put``, which
the workers wrap as they wrap Bigtable's ``mutate_rows`` (the injection point "bigtable")."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.coders import BooleanCoder, StrUtf8Coder, VarIntCoder
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.transforms.combiners import CountCombineFn
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    CombiningValueStateSpec,
    ReadModifyWriteStateSpec,
    SetStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from bench.dataflow_model.bundle import StageInstance, windowed_coder
from bench.dataflow_model.coordinator import Coordinator, ModelConfig, SourceBatch
from bench.dataflow_model.graph import GBK, IMPULSE, SOURCE, STATEFUL, Graph, extract
from bench.dataflow_model.messages import WorkItem

TOY_WRITE = ((f"{__name__}:ToyStore", "put", "bigtable"),)


class ToyStore:
    """A key-value store in a directory (one file per key, replaced atomically): what a worker
    writes survives the attempt, as a Bigtable write does."""

    def __init__(self, path: str) -> None:
        self.path = path

    def put(self, key: str, value: Any) -> None:
        tmp = os.path.join(self.path, f".{key}.{os.getpid()}.{id(value)}")
        with open(tmp, "w") as f:
            json.dump(value, f)
        os.replace(tmp, os.path.join(self.path, key))

    def get(self, key: str) -> Any:
        try:
            with open(os.path.join(self.path, key)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None


_COUNT = ReadModifyWriteStateSpec("count", VarIntCoder())
_IDS = SetStateSpec("ids", StrUtf8Coder())
_TOUCHED = ReadModifyWriteStateSpec("touched", BooleanCoder())
_N = ReadModifyWriteStateSpec("n", VarIntCoder())
_BAG = BagStateSpec("bag", StrUtf8Coder())
_COMBINED = CombiningValueStateSpec("count", VarIntCoder(), CountCombineFn())
_SET = SetStateSpec("set", StrUtf8Coder())
_WALL = TimerSpec("wall", TimeDomain.REAL_TIME)
_EVENT = TimerSpec("event", TimeDomain.WATERMARK)
COUNT, IDS, TOUCHED = (beam.DoFn.StateParam(s) for s in (_COUNT, _IDS, _TOUCHED))
N, BAG, COMBINED, SET = (beam.DoFn.StateParam(s) for s in (_N, _BAG, _COMBINED, _SET))
WALL, EVENT = beam.DoFn.TimerParam(_WALL), beam.DoFn.TimerParam(_EVENT)
KEY = beam.DoFn.KeyParam


class CountInState(beam.DoFn):
    """Counts each key's distinct ids in Beam state (committed with the outputs); writes the
    count of each id to the store, as a function of that state (a retry writes it again)."""

    def __init__(self, store: ToyStore) -> None:
        self.store = store

    def process(
        self,
        element: tuple[str, str],
        count: Any = COUNT,
        ids: Any = IDS,
    ) -> Any:
        key, id_ = element
        if id_ in ids.read():
            return
        ids.add(id_)
        n = (count.read() or 0) + 1
        count.write(n)
        self.store.put(f"{key}.{id_}", n)
        yield key, id_, n


class CountInStore(beam.DoFn):
    """Decides that an id is new from the store, as today's keyed stages do: a retry after the
    write finds it there and emits nothing. (The ReadModifyWrite state only makes it a stateful
    step: keyed, serial per key.)"""

    def __init__(self, store: ToyStore) -> None:
        self.store = store

    def process(self, element: tuple[str, str], touched: Any = TOUCHED) -> Any:
        key, id_ = element
        touched.write(True)
        if self.store.get(f"{key}.{id_}") is not None:
            return  # "seen before"
        n = (self.store.get(key) or 0) + 1
        self.store.put(f"{key}.{id_}", n)
        self.store.put(key, n)
        yield key, id_, n


class EveryKind(beam.DoFn):
    """Every kind of state and a timer in each time domain."""

    def process(
        self,
        element: tuple[str, str],
        n: Any = N,
        bag: Any = BAG,
        count: Any = COMBINED,
        seen: Any = SET,
        wall: Any = WALL,
        event: Any = EVENT,
    ) -> Any:
        key, value = element
        n.write((n.read() or 0) + 1)
        bag.add(value)
        count.add(value)
        seen.add(value)
        wall.set(Timestamp.of(1.0))
        event.set(Timestamp.of(2.0))
        yield key, n.read(), sorted(bag.read()), count.read(), sorted(seen.read())

    @on_timer(_WALL)
    def on_wall(self, key: Any = KEY, n: Any = N) -> Any:
        yield "wall", key, n.read()

    @on_timer(_EVENT)
    def on_event(self, key: Any = KEY) -> Any:
        yield "event", key


def _toy_graph(stage: beam.PTransform, *collect: str) -> Graph:
    p = beam.Pipeline(options=PipelineOptions(["--streaming"]))
    _ = (
        p
        | "In" >> beam.Create([("k", "v")])
        | "Key" >> beam.Map(lambda e: (e[0], e[1])).with_output_types(tuple[str, str])
        | "Stage" >> stage
        | "Out" >> beam.Map(lambda e: e)
    )
    return extract(p, ("Key", "Stage", "Out"), {"in": "In"}, collect)


def _batches(graph: Graph, events: list[tuple[str, str]], size: int = 10) -> list[SourceBatch]:
    coder = windowed_coder(graph, graph.stage_of_input("in").input)
    encoded = [
        (coder.encode(WindowedValue(e, Timestamp(i), (GlobalWindow(),))), i * 1_000_000)
        for i, e in enumerate(events)
    ]
    return [SourceBatch("in", encoded[i : i + size]) for i in range(0, len(encoded), size)]


def _events(keys: int = 6, ids: int = 240) -> list[tuple[str, str]]:
    events = [(f"k{i % keys}", f"id{i}") for i in range(ids)]
    return events + events[::7]  # redeliveries


def _run(graph: Graph, events: list[tuple[str, str]], log: Path, **knobs: Any) -> Coordinator:
    config = ModelConfig(workers=2, threads=2, extra_writes=TOY_WRITE, seed=3, **knobs)
    coordinator = Coordinator(graph, config, log)
    coordinator.run(_batches(graph, events))
    return coordinator


def test_the_product_graph_is_fused_as_dataflow_fuses_it() -> None:
    from bench.chaos_dataflow import FED, IN_SCOPE
    from pipelines.streaming import build_pipeline
    from pipelines.transforms.inference import ServingConfig

    options = PipelineOptions(["--streaming", "--project=rillet-local", "--key_buckets=0"])
    p = beam.Pipeline(options=options)
    build_pipeline(p, options, serving=ServingConfig("/nonexistent"))
    graph = extract(p, IN_SCOPE, FED)
    by_name = {s.name: s for s in graph.stages}
    assert [s.kind for s in graph.stages].count(SOURCE) == 2
    assert [s.kind for s in graph.stages].count(IMPULSE) == 1
    index = by_name["ComputeFeatures/IndexIds/ParDo(IndexIds)"]
    customers = by_name["ComputeFeatures/CustomerWindows/ParDo(CustomerWindows)"]
    terminals = by_name["ComputeFeatures/TerminalWindows/ParDo(TerminalWindows)"]
    assert {index.kind, customers.kind, terminals.kind} == {STATEFUL}
    # The shuffles: into the id index from both inputs and the restore, then by entity.
    for name in ("transactions", "labels", "ComputeFeatures/RestoreWaits/Start"):
        assert set(by_name[name].exits.values()) == {index.id}
    assert set(index.exits.values()) == {customers.id, terminals.id}
    assert set(customers.exits.values()) == {terminals.id}
    # Inference and both sinks run in the terminal stage's work item (no shuffle before them),
    # the dead letters' publisher in every stage that rejects something.
    assert {
        "Predict/RunInference/BeamML_RunInference/ParDo(_RunInferenceDoFn)/ParDo(_RunInferenceDoFn)",
        "WritePredictions/ToDatastore",
        "WritePredictions/ToPredictionTopic",
        "WriteDeadLetters/Publish",
    } <= set(terminals.steps)
    assert "WriteDeadLetters/Publish" in index.steps
    assert not [s for s in graph.steps if s.startswith(("EvaluateOnline", "Monitor", "Read"))]
    assert graph.steps[index.entry].timer_domains == {"ts-waiting_labels": TimeDomain.REAL_TIME}


def test_state_and_timers_travel_as_bytes_through_their_declared_coders() -> None:
    graph = _toy_graph(beam.ParDo(EveryKind()), "Stage")
    stage = next(s for s in graph.stages if s.kind == STATEFUL)
    instance = StageInstance(graph, stage.id)
    coder = windowed_coder(graph, stage.input)
    key = graph.key_coder(stage.input).encode_nested("k")
    committed: dict[bytes, bytes] = {}
    for value in ("b", "a", "b"):
        element = coder.encode(WindowedValue(("k", value), Timestamp(0), (GlobalWindow(),)))
        snapshot = dict(committed)
        item = WorkItem(1, 1, stage.id, [(key, [element])], state=snapshot)
        outputs, state, timers, _ = instance.run(item)
        assert snapshot == committed  # an attempt never changes what it was given
        for cell, blob in state[key].items():
            if blob is None:
                committed.pop(cell, None)
            else:
                committed[cell] = blob
    decoded = {
        beam_fn_api_pb2.StateKey.FromString(cell).bag_user_state.user_state_id: blob
        for cell, blob in committed.items()
    }
    assert VarIntCoder().get_impl().decode_nested(decoded["n"]) == 3
    assert decoded["bag"] == b"".join(StrUtf8Coder().get_impl().encode_nested(v) for v in "bab")
    assert VarIntCoder().get_impl().decode_nested(decoded["count"]) == 3
    assert {t.family: t.fire_us for t in timers} == {"ts-wall": 1_000_000, "ts-event": 2_000_000}
    # The timers fire from their encoded form, with the committed state.
    fire = [(t.key, t.family, t.encoded) for t in sorted(timers, key=lambda t: t.family)]
    outputs, _, _, _ = instance.run(WorkItem(2, 2, stage.id, [], fire, dict(committed)))
    values = [windowed_coder(graph, o[1].decode()).decode(o[2]).value for o in outputs]
    assert values == [("event", "k"), ("wall", "k", 3)]


def test_a_count_in_state_stays_exact_through_failures_retries_moves_and_zombies(
    tmp_path: Path,
) -> None:
    store = ToyStore(str(tmp_path))
    graph = _toy_graph(beam.ParDo(CountInState(store)), "Stage")
    log = tmp_path / "attempts.jsonl"
    coordinator = _run(
        graph,
        _events(),
        log,
        fail_rates={"bigtable": 0.15, "commit": 0.1},
        zombie_rate=0.3,  # enough eligible attempts become zombies even on a slow machine
        move_rate=0.2,
    )
    stats = coordinator.stats
    outputs = coordinator.collected["Stage"]
    assert Counter(o[1] for o in outputs) == Counter(f"id{i}" for i in range(240))  # once each
    for k in range(6):
        counts = sorted(n for key, _, n in outputs if key == f"k{k}")
        assert counts == list(range(1, 41))
    # The store holds what the committed state implies, zombies' late writes included.
    assert all(store.get(f"{key}.{id_}") == n for key, id_, n in outputs)
    assert stats.injected["bigtable"] > 0 and stats.injected["commit"] > 0
    assert stats.failures_retried and stats.uncommitted_items == 0
    assert stats.zombies > 0 and stats.refused_zombie_commits == stats.zombies
    assert stats.zombie_writes > 0 and stats.key_moves > 0
    # Every failed or refused attempt is followed by an attempt of the same item, on the same
    # keys, and each item commits once.
    attempts = [json.loads(line) for line in log.read_text().splitlines()]
    by_item: dict[int, list[dict[str, Any]]] = {}
    for a in attempts:
        by_item.setdefault(a["item"], []).append(a)
    for tries in by_item.values():
        outcomes = [a["outcome"] for a in tries]
        assert outcomes.count("committed") == 1
        assert len({tuple(a["keys"]) for a in tries}) == 1
        if "failed" in outcomes or "commit refused" in outcomes:
            assert len(tries) >= 2
    assert any(a["outcome"] == "zombie refused" for a in attempts)


def test_a_stage_that_decides_from_its_store_is_caught(tmp_path: Path) -> None:
    events = _events()
    clean = tmp_path / "clean"
    clean.mkdir()
    graph = _toy_graph(beam.ParDo(CountInStore(ToyStore(str(clean)))), "Stage")
    coordinator = _run(graph, events, clean / "log", fail_rates={}, zombie_rate=0.0)
    assert len(coordinator.collected["Stage"]) == 240  # without faults it is exact

    faulty = tmp_path / "faulty"
    faulty.mkdir()
    graph = _toy_graph(beam.ParDo(CountInStore(ToyStore(str(faulty)))), "Stage")
    coordinator = _run(graph, events, faulty / "log", fail_rates={"bigtable": 0.2})
    emitted = {o[1] for o in coordinator.collected["Stage"]}
    lost = {f"id{i}" for i in range(240)} - emitted
    assert coordinator.stats.injected["bigtable"] > 0
    assert lost  # the retry found its failed attempt's write and emitted nothing


def test_a_reshuffle_and_group_into_batches_run_with_both_timer_domains(tmp_path: Path) -> None:
    p = beam.Pipeline(options=PipelineOptions(["--streaming"]))
    _ = (
        p
        | "In" >> beam.Create([("k", "v")])
        | "Key" >> beam.Map(lambda e: (e[0], e[1])).with_output_types(tuple[str, str])
        | "Shuffle" >> beam.Reshuffle()
        | "Batch" >> beam.GroupIntoBatches.WithShardedKey(4, max_buffering_duration_secs=0.5)
        | "Out" >> beam.Map(lambda kv: (kv[0].key, sorted(kv[1])))
    )
    graph = extract(p, ("Key", "Shuffle", "Batch", "Out"), {"in": "In"}, ("Out",))
    assert {s.kind for s in graph.stages} == {SOURCE, GBK, STATEFUL}
    events = [(f"k{i % 3}", f"v{i}") for i in range(90)]
    config = ModelConfig(
        workers=2, threads=2, fail_rates={"commit": 0.1}, timer_drain_s=2.0, seed=5
    )
    coordinator = Coordinator(graph, config, tmp_path / "log")
    stats = coordinator.run(_batches(graph, events))
    batches = coordinator.collected["Out"]
    assert sorted(v for _, values in batches for v in values) == sorted(v for _, v in events)
    assert all(len(values) <= 4 for _, values in batches)
    assert all(key == f"k{int(v[1:]) % 3}" for key, values in batches for v in values)
    assert stats.timers_fired > 0 and stats.injected["commit"] > 0


@pytest.mark.parametrize("argv", [["--workers", "0"], ["--late", "2"], ["--start", "someday"]])
def test_a_wrong_argument_gets_one_line(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    from bench.chaos_dataflow import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("chaos-dataflow: ") and "\n" not in err
