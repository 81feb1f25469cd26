"""docs/specs/ is the one copy of each storage and message contract: these tests check that what
it names is what the code writes."""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.core import label_slots
from pipelines.core.batches import FeatureBatch
from pipelines.core.cells import BUCKET_US
from pipelines.core.declarations import load_definitions
from pipelines.core.definitions import MODEL_INPUTS
from pipelines.core.messages import DeadLetter
from pipelines.core.schema import _ID_RE
from pipelines.core.window_cells import (
    FORMAT_VERSION,
    Cell,
    LabelCell,
    Layout,
    decode_aggregates,
    decode_cell,
    decode_label,
    encode_aggregates,
    encode_cell,
    encode_label,
)
from pipelines.core.window_state import Bucket
from pipelines.stores import bigtable
from pipelines.transforms import entity_windows, id_index
from pipelines.transforms.inference import PredictionBatch
from pipelines.transforms.sinks import (
    RiskBands,
    _DatastoreWriteDoFn,
    _dead_letter_message,
    _to_message,
    prediction_records,
)
from tests.events import HANDBOOK_KEYS, handbook_tx

SPECS = Path(__file__).resolve().parents[2] / "docs" / "specs"
HANDBOOK = load_definitions()
TERMINAL_LAYOUT = Layout.of(HANDBOOK, HANDBOOK.entity("terminal"))


def spec(name: str) -> str:
    return (SPECS / name).read_text()


def backticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", text))


def test_bigtable_spec_names_the_codes_rows_families_and_formats() -> None:
    text = spec("bigtable.md")
    names = backticked(text)
    for family in (bigtable.FAMILY_TX, bigtable.FAMILY_LABEL):
        assert family in names
    assert bigtable.FAMILY_FEATURES in names
    assert f"{bigtable.ID_ROW_PREFIX}<transaction_id>" in names
    assert f"{bigtable.WAIT_ROW_PREFIX}<transaction_id>" in names
    assert "terminal#<terminal_id>#<bucket>" in names and "terminal#<terminal_id>" in names
    assert bigtable.SUMMARY_QUALIFIER.decode() in names
    assert f"Format {FORMAT_VERSION}." in text
    for code in ("encode_cell", "encode_label", "encode_aggregates", "encode_archive"):
        assert code in text
    for qualifier in (bigtable.HEAD_QUALIFIER, bigtable.ARCHIVE_QUALIFIER):
        assert qualifier.decode() in names
    assert bigtable._HEAD.format in names and bigtable._ARCHIVE_HEAD.format in names
    assert bigtable._FLOAT.format in text
    assert f"{BUCKET_US:,}" in text
    # The row keys the code builds have the shapes the spec gives.
    assert bigtable._wait_row_key("42") == b"wait#42"
    terminal = HANDBOOK.entity("terminal")
    assert bigtable.head_row_key(terminal, "T1") == b"terminal#T1"
    assert bigtable.bucket_row_key(terminal, "T1", 1_690_000) == b"terminal#T1#000001690000"


def test_head_and_archive_round_trip_in_the_specified_layout() -> None:
    from pipelines.stores.window_store import Archive, BucketCells, EntityHead

    head = EntityHead(1_690_000, 37)
    assert len(bigtable.encode_head(head)) == 1 + 2 * 8
    assert bigtable.decode_head(bigtable.encode_head(head)) == head
    cells = BucketCells(
        {
            "1": Cell(1_522_540_800_123_456, (), 7, (1.0, 2.5), 5, ("C9", 57.16)),
            "22": Cell(1_522_540_900_000_000, (), kept=("C10", 0.5)),
        },
        {"1": LabelCell(1_522_540_800_123_456, 1)},
    )
    archive = Archive(1_690_000, 1_690_100, cells)
    layout = TERMINAL_LAYOUT
    raw = bigtable.encode_archive(layout, archive)
    assert raw[0] == 2  # the archive's format version
    parts = [b"1", encode_cell(layout, cells.tx["1"]), b"22", encode_cell(layout, cells.tx["22"])]
    parts += [b"1", encode_label(layout, cells.labels["1"])]
    assert len(raw) == bigtable._ARCHIVE_HEAD.size + sum(4 + len(p) for p in parts)
    assert bigtable.decode_archive(layout, raw) == archive
    empty = Archive(0, 1, BucketCells())
    assert bigtable.decode_archive(layout, bigtable.encode_archive(layout, empty)) == empty
    for qualifier in (bigtable.HEAD_QUALIFIER, bigtable.ARCHIVE_QUALIFIER):
        assert not _ID_RE.match(qualifier.decode())


def test_cells_and_summary_round_trip_in_the_specified_layout() -> None:
    layout = TERMINAL_LAYOUT
    cell = Cell(1_522_540_800_123_456, (), 7, (1.0, 2.5), 5, ("C9", 57.16))
    raw = encode_cell(layout, cell)
    # Version, time, revision, carried revision, the carried values, then the named fields.
    named = b"\x02" + b"\x03\x0bcustomer_id\x03\x02C9" + b"\x03\x06amount\x01"
    carried = b"\x02" + struct.pack(">dd", 1.0, 2.5)
    assert raw[0] == FORMAT_VERSION
    assert raw.endswith(b"\x07\x05" + carried + named + struct.pack(">d", 57.16))
    assert decode_cell(layout, raw) == (cell, ())
    label = LabelCell(1_522_540_800_123_456, 1)
    assert decode_label(layout, encode_label(layout, label)) == (label, ())
    bucket = Bucket(layout, {"1": cell, "2": cell._replace(time_us=cell.time_us + 1)})
    bucket.put_label("1", label)
    summary = bucket.summary()
    raw = encode_aggregates(summary)
    assert raw[0] == FORMAT_VERSION
    assert decode_aggregates(raw) == summary and summary.holds(layout)
    # "#" is not allowed in an id, so the summary's qualifier is never a transaction id.
    assert not _ID_RE.match(bigtable.SUMMARY_QUALIFIER.decode())


def _record() -> dict[str, Any]:
    tx = handbook_tx("42", 1_522_540_800_000_000, "C1", "T1", 10.0, 1_522_540_801_000_000, "m1")
    batch = FeatureBatch([tx], np.zeros((1, len(MODEL_INPUTS))), revision=7, names=MODEL_INPUTS)
    return prediction_records(
        PredictionBatch(batch, np.array([0.7]), "v1", 1), RiskBands(), HANDBOOK_KEYS
    )[0]


def test_messages_spec_lists_the_prediction_fields_and_attributes() -> None:
    text = spec("messages.md")
    body, attributes = _to_message(_record())
    section = text.split("## Predictions", 1)[1].split("\n", 1)[1].split("## Dead letters")[0]
    data, attrs = section.split("Attributes:", 1)
    attrs = attrs.split("Delivery", 1)[0]
    assert {n for n in backticked(data) if " " not in n} == set(__import__("json").loads(body))
    assert backticked(attrs) - {"true", "false"} == set(attributes)


def test_messages_spec_lists_the_dead_letter_attributes_and_reasons() -> None:
    text = spec("messages.md").split("## Dead letters", 1)[1]
    message = _dead_letter_message(
        DeadLetter(b"x", "label_mismatch", "d", "labels", "features", message_id="m")
    )
    assert set(message.attributes) <= backticked(text)
    source = Path(id_index.__file__).read_text() + Path(label_slots.__file__).read_text()
    source += Path(entity_windows.__file__).read_text()
    reasons = set(
        re.findall(
            r'"(duplicate_(?:transaction_id|label)|unknown_transaction|label_mismatch'
            r'|store_rejected)"',
            source,
        )
    )
    assert reasons == {
        "duplicate_transaction_id",
        "duplicate_label",
        "unknown_transaction",
        "label_mismatch",
        "store_rejected",
    }
    assert reasons <= backticked(text)


def _entity(record: dict[str, Any], namespace: str | None = None) -> Any:
    """The Prediction entity the sink writes for ``record``, as the client library reads it."""
    from google.cloud.datastore import helpers
    from google.cloud.datastore_v1.types import entity as entity_pb

    sink = _DatastoreWriteDoFn("spec", "Prediction", namespace, RiskBands(), HANDBOOK_KEYS)
    raw = entity_pb.Entity.pb()()
    sink._entity_pb(raw, record, "Prediction")
    return helpers.entity_from_protobuf(raw)


def test_datastore_spec_lists_the_entity_properties() -> None:
    entity = _entity(_record())
    text = spec("datastore.md").split("## Online evaluation")[0]
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    listed = {n for line in rows for n in backticked(line.split("|")[1])}
    assert listed == set(entity)
    assert set(entity.exclude_from_indexes) == {"features"}
    assert entity.key.kind == "Prediction" and entity.key.name == "42"
    assert _entity(_record(), "ns").key.namespace == "ns"


def test_datastore_spec_lists_the_evaluation_properties() -> None:
    from pipelines.transforms.online_eval import (
        EVALUATION_KIND,
        DayRow,
        day_figures,
        evaluation_properties,
    )

    text = spec("datastore.md").split("## Online evaluation")[1]
    assert f"kind `{EVALUATION_KIND}`" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    listed = {n for line in rows for n in backticked(line.split("|")[1])}
    figures = day_figures(
        "v1",
        "2018-08-08",
        [DayRow("t1", "c1", 0, 0.1, True), DayRow("t2", "c2", 1, 0.9, True)],
        False,
    )
    assert listed == set(evaluation_properties(figures))


def test_read_rows_stream_parsing() -> None:
    """Chunks as Bigtable may send them: a row key repeated on the chunks of its row, a value
    split over chunks, a row reset mid-way, a family change without a row change."""
    from google.cloud.bigtable_v2.types import bigtable

    from pipelines.stores.bigtable import _parse_rows

    response = bigtable.ReadRowsResponse.pb()()

    def chunk(**fields: Any) -> None:
        c = response.chunks.add()
        for name in ("family_name", "qualifier"):
            if name in fields:
                getattr(c, name).value = fields.pop(name)
        for name, value in fields.items():
            setattr(c, name, value)

    chunk(row_key=b"a", family_name="tx", qualifier=b"q1", value=b"v1")
    chunk(row_key=b"a", qualifier=b"q2", value=b"par", value_size=5)
    chunk(value=b"ts")
    chunk(family_name="label", qualifier=b"q1", value=b"L", commit_row=True)
    chunk(row_key=b"b", family_name="tx", qualifier=b"x", value=b"lost")
    chunk(reset_row=True)
    chunk(row_key=b"b", family_name="tx", qualifier=b"y", value=b"kept", commit_row=True)
    rows = _parse_rows([response])
    assert [
        (
            r.row_key,
            {f: {q: [c.value for c in v] for q, v in cs.items()} for f, cs in r.cells.items()},
        )
        for r in rows
    ] == [
        (b"a", {"tx": {b"q1": [b"v1"], b"q2": [b"parts"]}, "label": {b"q1": [b"L"]}}),
        (b"b", {"tx": {b"y": [b"kept"]}}),
    ]


def test_registry_spec_lists_the_pointer_keys_history_actions_and_policy(tmp_path: Any) -> None:
    """registry.md's table is the keys the registry writes; its actions and policy fields are
    the code's."""
    import json

    from pipelines.stores import model_registry
    from tests.unit.test_model_registry import make_version

    for version in ("v1", "v2"):
        make_version(tmp_path, version)
    registry = model_registry.ModelRegistry(str(tmp_path))
    registry.register("v2", as_="challenger", by="spec")
    registry.set_policy(mode="auto")
    written = json.loads((tmp_path / model_registry.POINTER_FILE).read_text())
    text = spec("registry.md")
    section = text.split("## The pointer", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert {n for line in rows for n in backticked(line.split("|")[1])} == set(written)
    history = section.split("Each `history` entry", 1)[1]
    keys = {k for entry in written["history"] for k in entry}
    assert keys <= backticked(history)
    listed = set(re.findall(r"^- `([\w-]+)`:", history, re.M))
    assert listed == set(model_registry.ACTIONS)
    policy = text.split("## Promotion policy", 1)[1].split("\n## ", 1)[0]
    assert set(model_registry.DEFAULT_POLICY) <= backticked(policy)
    assert set(model_registry.METRICS) <= backticked(policy)
    assert f"`{model_registry.EVALUATION_KIND}`" in text


def _table_rows(section: str) -> list[list[str]]:
    """The cells of a Markdown table's body rows (those starting with a backticked name)."""
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| `")
    ]


def test_reference_workload_spec_lists_the_presets_inputs_and_protocol() -> None:
    """reference-workload.md's presets table is PRESETS (and the tests' golden counts), its
    inputs table is MODEL_INPUTS in order, its handbook dates and folds are the Protocol's."""
    from models.evaluation import Protocol
    from pipelines.app.simulator import PRESETS
    from pipelines.core.definitions import LABEL_DELAY_DAYS
    from tests.unit.test_simulator import GOLDEN

    text = spec("reference-workload.md")
    presets = text.split("### Parameters and presets", 1)[1].split("\n### ", 1)[0]
    rows = {row[0].strip("`"): row[1:] for row in _table_rows(presets)}
    assert set(rows) == set(PRESETS)
    for name, config in PRESETS.items():
        customers, terminals, days, start, radius, transactions, frauds = rows[name]
        listed = (int(customers.replace(",", "")), int(terminals.replace(",", "")), int(days))
        assert listed == (config.n_customers, config.n_terminals, config.n_days), name
        assert (start, float(radius)) == (config.start_date, config.radius), name
        if name in GOLDEN:
            counts = (int(transactions.replace(",", "")), int(frauds.replace(",", "")))
            assert counts == GOLDEN[name][:2], name

    inputs = text.split("## 2. The 15 model inputs", 1)[1].split("\n## ", 1)[0]
    assert tuple(row[0].strip("`") for row in _table_rows(inputs)) == MODEL_INPUTS
    assert len(MODEL_INPUTS) == 15
    assert f"delayed by {LABEL_DELAY_DAYS} days" in inputs

    protocol = Protocol.handbook()
    described = text.split("## 3. The evaluation protocol", 1)[1]
    for first, last in (protocol.train_range, protocol.delay_range, protocol.test_range):
        assert f"{first} .. {last}" in described
    for (train_first, train_last), (valid_first, valid_last) in protocol.validation_folds():
        assert f"train {train_first} .. {train_last[5:]}" in described
        assert f"validate {valid_first[5:]} .. {valid_last[5:]}" in described
    assert f"spans {protocol.span_days} days" in described


def test_no_reference_points_outside_the_repository() -> None:
    """The reference workload is docs/specs/reference-workload.md: nothing in the code, tests or
    docs sends a user to a file the repository does not have (a sibling checkout's specs)."""
    root = SPECS.parents[1]
    outside = re.compile(r"shared/specs|reference-dataset\.md")
    found = [
        f"{path.relative_to(root)}:{number}"
        for folder in ("pipelines", "models", "bench", "tests", "docs", "terraform")
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
        and path.suffix in {".py", ".md", ".tf", ".txt", ".json", ".cfg", ".html"}
        and path != Path(__file__).resolve()  # this test names the pattern
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if outside.search(line)
    ]
    found += [
        f"{name}:{number}"
        for name in ("Makefile", "pyproject.toml")
        if (root / name).exists()
        for number, line in enumerate((root / name).read_text().splitlines(), 1)
        if outside.search(line)
    ]
    assert found == []


def test_messages_spec_names_the_local_project_resources_and_variables() -> None:
    """messages.md's "Where" names the local project, every topic and subscription the local
    stack creates and every variable 'rillet local up' prints."""
    from pipelines.app.local import DEFAULT_PORTS, Topology, emulator_env
    from pipelines.options import LOCAL_PROJECT

    names = backticked(spec("messages.md").split("## Where", 1)[1].split("\n## ", 1)[0])
    topology = Topology()
    assert topology.project == LOCAL_PROJECT and LOCAL_PROJECT in names
    for subscription, topic in topology.subscriptions().items():
        assert {subscription, topic} <= names
    assert set(emulator_env(DEFAULT_PORTS)) <= names


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole heading line) up to the next heading of any level."""
    body = text.split(f"\n{heading}\n", 1)[1]
    return re.split(r"\n#{1,6} ", body, maxsplit=1)[0]


def _first_column(section: str) -> set[str]:
    return {n for row in _table_rows(section) for n in backticked(row[0])}


def _accepted_keys(place: Any) -> set[str]:
    """The keys the loader accepts at one place of a definitions file, as its own error lists
    them: the handbook's file with an unknown key ``bogus`` put there by ``place``."""
    import pytest
    import yaml

    from pipelines.core.declarations import (
        DEFAULT_DEFINITIONS,
        DefinitionsError,
        parse_definitions,
    )

    data = yaml.safe_load(DEFAULT_DEFINITIONS.read_text())
    place(data)
    with pytest.raises(DefinitionsError) as refused:
        parse_definitions(data)
    (line,) = [e for e in refused.value.errors if "unknown key(s) bogus (expected: " in e]
    return set(line.split("(expected: ", 1)[1].rstrip(")").split(", "))


def test_definitions_spec_documents_every_key_the_loader_accepts() -> None:
    """definitions.md's key tables are exactly the keys the loader accepts, at every level."""
    text = spec("definitions.md")

    def derived(data: dict[str, Any]) -> None:
        data["features"].append({"name": "D", "ratio": ["TX_AMOUNT", "TX_AMOUNT"], "bogus": 1})

    places = {
        "## The file": lambda d: d.update(bogus=1),
        "## `events`": lambda d: d["events"].update(bogus=1),
        "## `labels`": lambda d: d["labels"].update(bogus=1),
        "## Fields": lambda d: d["events"]["fields"]["amount"].update(bogus=1),
        "## `entities`": lambda d: d["entities"]["customer"].update(bogus=1),
        "### Row features": lambda d: d["features"][0].update(bogus=1),
        "### Window features": lambda d: d["features"][3].update(bogus=1),
        "### Derived inputs": derived,
    }
    for heading, place in places.items():
        assert _first_column(_section(text, heading)) == _accepted_keys(place), heading


def test_definitions_spec_documents_every_operation_type_unit_and_time_part() -> None:
    """Every operation of OPERATIONS has its row (with the field it takes) and its section;
    every field type, duration unit and time part of a filter is documented."""
    from pipelines.core.declarations import _UNIT_US, FIELD_TYPES, OPERATIONS
    from pipelines.core.predicates import TIME_PARTS

    text = spec("definitions.md")
    operations = _section(text, "## Operations")
    takes = {None: "none", "number": "numeric", "any": "any"}
    rows = {row[0].strip("`"): row[1] for row in _table_rows(operations)}
    assert rows == {op: takes[field] for op, field in OPERATIONS.items()}
    body = text.split("\n## Operations\n", 1)[1].split("\n## ", 1)[0]
    assert set(re.findall(r"^### `(\w+)`$", body, re.M)) == set(OPERATIONS)
    assert _first_column(_section(text, "### Field types")) == set(FIELD_TYPES)
    assert set(_UNIT_US) <= backticked(_section(text, "## Durations"))
    assert set(TIME_PARTS) <= backticked(_section(text, "## Filters"))


def test_registry_spec_lists_the_cards_input_fields() -> None:
    from pipelines.core.declarations import load_definitions
    from pipelines.core.model_inputs import CARD_FIELDS, card_inputs

    table = _section(spec("registry.md"), "## The model card")
    written = card_inputs(load_definitions(), ["TX_AMOUNT"])
    assert _first_column(table) == set(CARD_FIELDS) == set(written)
