"""The keyed stages' records cross every shuffle through their own deterministic coder, never a
pickle (pipelines/transforms/coders.py)."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.core.batches import Part, Routed
from pipelines.core.schema import StageRecord
from pipelines.transforms.coders import STAGE_RECORD_URN, StageRecordCoder, WakeUp
from tests.events import handbook_label, handbook_tx

TX = handbook_tx("42", 1_522_540_800_123_456, "C1", "T9", 57.16, 1_522_540_801_000_000, "m-1")
LB = handbook_label("42", 1_522_540_800_123_456, "C1", "T9", 1, 1_522_545_000_000_000, "m-2")
RECORDS = [
    TX,
    LB,
    WakeUp("~3"),
    Routed(TX, token=7),
    Routed(LB),
    Part(TX, (1.0, 57.16, 2.0, 0.1 + 0.2, 3.0, 1e300), 1_700_000_000_001_003, True, 9),
    Part(handbook_tx("é", 0, "", "", -0.0), (), 0),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_every_record_round_trips_bit_for_bit(record: StageRecord) -> None:
    coder = StageRecordCoder()
    encoded = coder.encode(record)
    assert coder.decode(encoded) == record
    assert coder.encode(coder.decode(encoded)) == encoded  # deterministic
    assert coder.is_deterministic()


def test_the_registry_gives_the_stage_coder_for_keyed_stage_inputs() -> None:
    import pipelines.transforms.features  # noqa: F401  (registers the coder)

    coder = beam.coders.registry.get_coder(beam.typehints.Tuple[str, StageRecord])
    assert coder.is_deterministic()
    assert isinstance(coder.value_coder(), StageRecordCoder)
    assert "Pickle" not in repr(coder) and "FastPrimitives" not in repr(coder)


def test_an_unknown_version_is_refused() -> None:
    raw = bytearray(StageRecordCoder().encode(TX))
    raw[1] = 9
    with pytest.raises(ValueError, match="unknown version 9"):
        StageRecordCoder().decode(bytes(raw))


def test_the_stateful_steps_key_and_value_coders_are_deterministic() -> None:
    """Every stateful step of the streaming graph (and the shuffle in front of it) encodes its
    input with a deterministic coder; the stages' values with StageRecordCoder."""
    from pipelines.streaming import build_pipeline
    from pipelines.transforms.inference import ServingConfig

    options = PipelineOptions(["--streaming", "--project=rillet-test", "--runner=DirectRunner"])
    p = beam.Pipeline(options=options)
    build_pipeline(p, options, ServingConfig("unused"))
    proto = p.to_runner_api()
    coders = proto.components.coders
    seen = 0
    for transform in proto.components.transforms.values():
        if transform.unique_name.split("/")[-1] not in {
            "IndexIds",
            "CustomerWindows",
            "TerminalWindows",
        }:
            continue
        (pcoll,) = (proto.components.pcollections[i] for i in transform.inputs.values())
        kv = coders[pcoll.coder_id]
        assert kv.spec.urn == "beam:coder:kv:v1", kv
        key, value = (coders[c] for c in kv.component_coder_ids)
        assert key.spec.urn == "beam:coder:string_utf8:v1"
        assert value.spec.urn == STAGE_RECORD_URN and not value.spec.payload
        seen += 1
    assert seen == 3
