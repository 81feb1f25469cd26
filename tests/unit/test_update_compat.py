"""Dataflow ``--update`` safety: the streaming graph's state and shuffles against a committed
fingerprint, and no state or shuffle coder that pickles a project class.

``--update`` replaces a running job's graph and carries its state and in-flight shuffled data
over, matched by full step name and decoded with the new job's coders. So for every stateful
step and every shuffle of the graph ``pipelines.streaming.build_pipeline`` builds for Dataflow
(offline: nothing is launched), the fingerprint holds

- the stateful ParDos: full step name, input coder (the runner shuffles by key), each state
  cell's name and coder, each timer's name, time domain and coder;
- the shuffles: every GroupByKey's full name and input coder (with its window coder), and every
  combine's accumulator coder (Dataflow lifts combines: partial results are shuffled);

a coder as its runner-API description, components included (a row coder as its schema's field
names and types; the schema's random id left out). One file per feature definitions file under
``tests/unit/update_fingerprint/`` (``default.json``: pipelines/core/definitions.py), so that a
definitions file that adds a feature gets its own and leaves the existing steps' as they are.

On a mismatch the test prints the difference. If the change is meant, regenerate the file
(``RILLET_UPDATE_FINGERPRINT=1 pytest tests/unit/test_update_compat.py``) and plan the rollout:
a renamed step needs ``--transform_name_mapping``; a changed state or shuffle coder cannot take
over the running job's state (drain it and start a new job).
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import beam_runner_api_pb2, schema_pb2
from apache_beam.runners import pipeline_context

from pipelines.core.definitions import definitions_version
from pipelines.streaming import STEP_LABELS, build_pipeline
from pipelines.transforms.inference import ServingConfig
from pipelines.transforms.monitoring import Monitor  # noqa: F401 - registers the rows' coders

FINGERPRINTS = Path(__file__).parent / "update_fingerprint"
REGENERATE = "RILLET_UPDATE_FINGERPRINT"
DEFINITIONS = ("default",)  # one fingerprint per feature definitions file
# Coders that pickle the values they encode: a project class is then stored by module and name.
PICKLING = {
    "PickleCoder",
    "CloudpickleCoder",
    "DillCoder",
    "FastPrimitivesCoder",
    "DeterministicFastPrimitivesCoder",
    "DeterministicFastPrimitivesCoderV2",
}
PYTHON_ANY = "beam:logical:pythonsdk_any:v1"  # a row field typed Any: pickled


def dataflow_graph(definitions: str) -> beam_runner_api_pb2.Pipeline:
    """The graph deployed to Dataflow for one definitions file, built offline."""
    assert definitions == "default", "only the default definitions exist so far"
    options = PipelineOptions(
        [
            "--runner=DataflowRunner",
            "--project=my-project",
            "--region=europe-west1",
            "--temp_location=gs://my-bucket/temp",
            "--streaming",
            "--enable_streaming_engine",
            "--model_dir=gs://my-bucket/models",
            "--no_auth",
            "--dry_run=True",
        ]
    )
    p = beam.Pipeline(options=options)
    build_pipeline(p, options, serving=ServingConfig("gs://my-bucket/models"))
    return p.to_runner_api()


class Describer:
    """Stable, readable descriptions of a graph's coders."""

    def __init__(self, proto: beam_runner_api_pb2.Pipeline) -> None:
        self.components = proto.components
        self.context = pipeline_context.PipelineContext(proto.components)

    def coder(self, coder_id: str) -> str:
        spec = self.components.coders[coder_id]
        urn = spec.spec.urn
        if urn == common_urns.coders.ROW.urn:
            return self.schema(schema_pb2.Schema.FromString(spec.spec.payload))
        if urn == python_urns.PICKLED_CODER:
            return "pickled:" + self.python_coder(self.context.coders.get_by_id(coder_id))
        name = urn.removeprefix("beam:coder:").removesuffix(":v1")
        parts = [self.coder(c) for c in spec.component_coder_ids]
        return f"{name}({', '.join(parts)})" if parts else name

    def python_coder(self, coder: Any) -> str:
        parts = [self.python_coder(c) for c in coder._get_component_coders()]
        name = type(coder).__name__
        return f"{name}({', '.join(parts)})" if parts else name

    def schema(self, schema: schema_pb2.Schema) -> str:
        fields = ", ".join(f"{f.name}: {self.field_type(f.type)}" for f in schema.fields)
        return f"row({fields})"

    def field_type(self, t: schema_pb2.FieldType) -> str:
        kind = t.WhichOneof("type_info")
        if kind == "atomic_type":
            text = schema_pb2.AtomicType.Name(t.atomic_type).lower()
        elif kind == "array_type":
            text = f"array<{self.field_type(t.array_type.element_type)}>"
        elif kind == "iterable_type":
            text = f"iterable<{self.field_type(t.iterable_type.element_type)}>"
        elif kind == "map_type":
            key, value = t.map_type.key_type, t.map_type.value_type
            text = f"map<{self.field_type(key)}, {self.field_type(value)}>"
        elif kind == "row_type":
            text = self.schema(t.row_type.schema)
        else:
            logical = t.logical_type
            text = f"logical[{logical.urn}]<{self.field_type(logical.representation)}>"
        return text + ("?" if t.nullable else "")

    def pcollection(self, pcoll_id: str) -> str:
        pcoll = self.components.pcollections[pcoll_id]
        strategy = self.components.windowing_strategies[pcoll.windowing_strategy_id]
        return f"{self.coder(pcoll.coder_id)} in {self.coder(strategy.window_coder_id)}"


def fingerprint(proto: beam_runner_api_pb2.Pipeline, definitions: str) -> dict[str, Any]:
    """The graph's stateful steps, shuffles and combines with their coders (module docstring)."""
    describe = Describer(proto)
    stateful: dict[str, Any] = {}
    shuffles: dict[str, str] = {}
    combines: dict[str, str] = {}
    for transform in proto.components.transforms.values():
        urn = transform.spec.urn
        if urn == common_urns.primitives.PAR_DO.urn:
            payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            if not payload.state_specs and not payload.timer_family_specs:
                continue
            (main,) = [
                pcoll
                for tag, pcoll in transform.inputs.items()
                if tag not in payload.side_inputs and tag not in payload.timer_family_specs
            ]
            state = {}
            for name, spec in payload.state_specs.items():
                kind = spec.WhichOneof("spec")
                cell = getattr(spec, kind)
                coders = {
                    field.name.removesuffix("coder_id").rstrip("_"): describe.coder(value)
                    for field, value in cell.ListFields()
                    if field.name.endswith("coder_id")
                }
                text = (
                    next(iter(coders.values()))
                    if len(coders) == 1
                    else ", ".join(f"{k}={v}" for k, v in coders.items())
                )
                state[name] = f"{kind.removesuffix('_spec')}: {text}"
            timers = {
                name: f"{beam_runner_api_pb2.TimeDomain.Enum.Name(spec.time_domain).lower()}: "
                f"{describe.coder(spec.timer_family_coder_id)}"
                for name, spec in payload.timer_family_specs.items()
            }
            stateful[transform.unique_name] = {
                "input": describe.pcollection(main),
                "state": dict(sorted(state.items())),
                "timers": dict(sorted(timers.items())),
            }
        elif urn == common_urns.primitives.GROUP_BY_KEY.urn:
            (pcoll,) = transform.inputs.values()
            shuffles[transform.unique_name] = describe.pcollection(pcoll)
        elif urn == common_urns.composites.COMBINE_PER_KEY.urn:
            payload = beam_runner_api_pb2.CombinePayload.FromString(transform.spec.payload)
            combines[transform.unique_name] = describe.coder(payload.accumulator_coder_id)
    return {
        "definitions": definitions,
        "definitions_version": definitions_version(),
        "regenerate": f"{REGENERATE}=1 pytest tests/unit/test_update_compat.py",
        "stateful": dict(sorted(stateful.items())),
        "shuffles": dict(sorted(shuffles.items())),
        "combines": dict(sorted(combines.items())),
    }


def _text(fp: dict[str, Any]) -> str:
    return json.dumps(fp, indent=2) + "\n"


@pytest.fixture(scope="module")
def fingerprints() -> dict[str, dict[str, Any]]:
    return {d: fingerprint(dataflow_graph(d), d) for d in DEFINITIONS}


@pytest.mark.parametrize("definitions", DEFINITIONS)
def test_the_graph_matches_its_update_fingerprint(
    definitions: str, fingerprints: dict[str, dict[str, Any]]
) -> None:
    path = FINGERPRINTS / f"{definitions}.json"
    now = _text(fingerprints[definitions])
    if os.environ.get(REGENERATE) == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(now)
    committed = path.read_text() if path.exists() else ""
    if now != committed:
        diff = "".join(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                now.splitlines(keepends=True),
                f"{path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}",
                "the graph now",
            )
        )
        pytest.fail(
            "The streaming graph's state or shuffles changed: a running job cannot take this "
            "change by `--update` as it is.\n"
            f"{diff}\n"
            "If it is meant: regenerate the fingerprint with\n"
            f"    {REGENERATE}=1 pytest tests/unit/test_update_compat.py\n"
            'and commit it. A renamed step needs --transform_name_mapping=\'{"Old/Name": '
            '"New/Name"}\' on `rillet deploy --update`; a changed state or shuffle coder cannot '
            "decode the running job's state: drain it and start a new job.",
            pytrace=False,
        )


def pickling(fp: dict[str, Any], top_level: str) -> list[str]:
    """Where the steps under ``top_level`` keep or shuffle a pickled value."""

    def pickles(coder: str) -> bool:
        return PYTHON_ANY in coder or any(f"pickled:{name}" in coder for name in PICKLING)

    found = []
    for step, spec in fp["stateful"].items():
        if step.split("/")[0] != top_level:
            continue
        places = (
            {"input": spec["input"]}
            | {f"state {n}": c for n, c in spec["state"].items()}
            | {f"timer {n}": c for n, c in spec["timers"].items()}
        )
        found += [f"{step} {where}: {coder}" for where, coder in places.items() if pickles(coder)]
    for section in ("shuffles", "combines"):
        for step, coder in fp[section].items():
            if step.split("/")[0] == top_level and pickles(coder):
                found.append(f"{step} ({section[:-1]}): {coder}")
    return found


@pytest.mark.parametrize("top_level", STEP_LABELS)
def test_no_state_or_shuffle_pickles_a_project_class(
    top_level: str, fingerprints: dict[str, dict[str, Any]]
) -> None:
    for definitions, fp in fingerprints.items():
        found = pickling(fp, top_level)
        assert not found, (
            f"{definitions}: state or shuffled values of {top_level} are pickled (an untyped "
            "PCollection, a PickleCoder, or a row field typed Any): a moved or renamed class then "
            "breaks --update. Give them a schema'd type (pipelines/transforms/coders.py):\n  "
            + "\n  ".join(found)
        )


def test_the_fingerprint_sees_every_stateful_step_and_shuffle(
    fingerprints: dict[str, dict[str, Any]],
) -> None:
    """What the fingerprint covers (so that a step it silently missed cannot pass)."""
    fp = fingerprints["default"]
    assert {
        "EvaluateOnline/AwaitPredictions",
        "EvaluateOnline/DayQuality",
        "Monitor/JudgeDrift/ParDo(JudgeDrift)",
        "Monitor/JudgeHealth",
        "Monitor/JudgeQuality",
        "Monitor/JudgeOnlineQuality",
    } <= set(fp["stateful"])
    assert fp["stateful"]["EvaluateOnline/DayQuality"]["state"]["rows"] == (
        "bag: row(transaction_id: string, card: string, label: int64, score: double, "
        "champion: boolean)"
    )
    assert {"Monitor/SumBuckets", "Monitor/MergeHealthShards", "Monitor/MergeHealth"} <= set(
        fp["combines"]
    )
    assert "Monitor/SumBuckets/GroupByKey" in fp["shuffles"]
    assert sum(step.startswith("ComputeFeatures/") for step in fp["stateful"]) == 3
    # What the pickle check finds, where a coder pickles (reported, by step and place).
    step = {"input": "kv(pickled:FastPrimitivesCoder)", "state": {}, "timers": {}}
    broken = {**fp, "stateful": {"Monitor/X": step}}
    assert pickling(broken, "Monitor") == ["Monitor/X input: kv(pickled:FastPrimitivesCoder)"]
