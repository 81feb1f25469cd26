"""EntityState (pipelines/core/window_state.py) against the brute-force oracle (tests/oracle.py):
the same bits, for random definitions and random streams.

Random definitions files (three entities, one a composite key; every operation; windows from
seconds to days; delays; filters over fields and time parts) over random streams (ties, events
exactly a window apart, bucket edges, labels late and replaced, labels of unknown transactions),
each entity's state built with its cells put in a random order and then asked in four ways:

  all         every cell loaded;
  interleaved puts and questions interleaved as a stream asks them (the oracle over what was
              put so far): the views and prefix sums kept current as cells arrive;
  summaries   only the edge buckets of the query loaded, the others known by their summaries
              (through the stored encoding, cells too), as a cold stage reads them;
  trimmed     the state trimmed behind the later half of the stream, then asked about it;
  late        summaries written under definitions that lacked some features: the state finds
              those buckets incomplete, loads their cells, and answers the new features.
"""

from __future__ import annotations

import dataclasses
import random
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipelines.core import window_state
from pipelines.core.cells import BUCKET_US, bucket_of
from pipelines.core.declarations import Definitions, Entity, WindowFeature, parse_definitions
from pipelines.core.window_cells import (
    AccKey,
    Aggregates,
    Cell,
    LabelCell,
    Layout,
    Stat,
    decode_aggregates,
    decode_cell,
    decode_label,
    encode_aggregates,
    encode_cell,
    encode_label,
)
from pipelines.core.window_state import Bucket, EntityState, Query, tie_key
from tests.oracle import oracle_value

T0 = 1522540800 * 1_000_000  # 2018-04-01T00:00:00Z, a Sunday
MINUTE = 60_000_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR

EVENT_FIELDS = {
    "tx_id": {"type": "id"},
    "ts": {"type": "time"},
    "card": {"type": "id"},
    "merchant": {"type": "string"},
    "country": {"type": "string", "values": ["FR", "DE", "US"]},
    "amount": {"type": "number", "scale": 2},
    "qty": {"type": "integer"},
}
LABEL_FIELDS = {
    "tx_id": {"type": "id"},
    "ts": {"type": "time"},
    "card": {"type": "id"},
    "merchant": {"type": "string"},
    "country": {"type": "string"},
    "is_fraud": {"type": "label"},
}
ENTITIES = {
    "card": {"keys": ["card"]},
    "merchant": {"keys": ["merchant"]},
    "card_merchant": {"keys": ["card", "merchant"]},
}
WINDOWS = ["30s", "5m", "10m", "15m", "1h", "3h", "1d", "2d"]
DELAYS = ["0s", "0s", "0s", "5m", "15m", "1h", "1d"]
FILTERS = [
    None,
    "amount > 50",
    "hour < 12",
    "country == 'FR'",
    "country in ['FR', 'DE'] and amount <= 100",
    "weekday >= 5 or qty > 2",
]
LABEL_FILTERS = [None, "country == 'FR'", "hour < 12", "merchant != 'm1'"]
NUMERIC = ["amount", "qty"]
ANY_FIELD = ["amount", "qty", "country", "merchant", "card"]


def _definitions(features: list[dict[str, Any]], label_delay: str) -> Definitions:
    return parse_definitions(
        {
            "name": "random",
            "events": {
                "topic": "transactions",
                "id": "tx_id",
                "time": "ts",
                "fields": EVENT_FIELDS,
            },
            "labels": {
                "topic": "labels",
                "id": "tx_id",
                "time": "ts",
                "label": "is_fraud",
                "delay": label_delay,
                "fields": LABEL_FIELDS,
            },
            "entities": ENTITIES,
            "features": features,
        }
    )


@st.composite
def feature_specs(draw: Any, label_delay: str) -> dict[str, Any]:
    op = draw(
        st.sampled_from(
            ["count", "sum", "mean", "min", "max", "std", "distinct", "last", "since_previous"]
            + ["label_rate"] * 2
        )
    )
    spec: dict[str, Any] = {
        "entity": draw(st.sampled_from(sorted(ENTITIES))),
        "op": op,
        "window": draw(st.sampled_from(WINDOWS)),
    }
    if op in ("sum", "mean", "min", "max", "std", "last"):
        spec["field"] = draw(st.sampled_from(NUMERIC))
    elif op == "distinct":
        spec["field"] = draw(st.sampled_from(ANY_FIELD))
    if op == "label_rate":
        delays = ["0s", "5m", "15m", "1h", "1d"]
        shortest = {"0s": 0, "10m": 2}[label_delay]
        spec["delay"] = draw(st.sampled_from(delays[shortest:]))
        where = draw(st.sampled_from(LABEL_FILTERS))
    else:
        spec["delay"] = draw(st.sampled_from(DELAYS))
        where = draw(st.sampled_from(FILTERS))
    if where is not None:
        spec["where"] = where
    return spec


@st.composite
def scenarios(draw: Any) -> tuple[Definitions, list[dict[str, Any]], list[dict[str, Any]], int]:
    label_delay = draw(st.sampled_from(["0s", "0s", "10m"]))
    specs = draw(st.lists(feature_specs(label_delay), min_size=1, max_size=6))
    for i, spec in enumerate(specs):
        spec["name"] = f"F{i}"
    defs = _definitions(specs, label_delay)
    n = draw(st.integers(5, 60))
    ids = draw(st.permutations(range(1, 120)))[:n]
    events = []
    for i in ids:
        t = (
            T0
            + draw(st.sampled_from([0, 0, 0, 1, 2])) * DAY
            + draw(st.integers(0, 24)) * 5 * MINUTE
            + draw(st.sampled_from([0, 0, 0, 0, 1, -1, 1_000_000, BUCKET_US]))
        )
        events.append(
            {
                "tx_id": str(i),
                "ts": t,
                "card": draw(st.sampled_from(["c1", "c2"])),
                "merchant": draw(st.sampled_from(["m1", "m2", "m#3"])),
                "country": draw(st.sampled_from(["FR", "DE", "US"])),
                "amount": draw(st.integers(0, 20_000)) / 100,
                "qty": draw(st.integers(0, 4)),
            }
        )
    labels = []
    for e in events:
        for _ in range(draw(st.sampled_from([0, 1, 1, 2]))):  # 2: a later label replaces it
            labels.append({k: e[k] for k in LABEL_FIELDS if k != "is_fraud"})
            labels[-1]["is_fraud"] = draw(st.integers(0, 1))
    for j in range(draw(st.integers(0, 2))):  # labels of transactions the stream never saw
        labels.append(
            {
                "tx_id": f"L{j}",
                "ts": T0 + draw(st.integers(0, 60)) * HOUR,
                "card": "c1",
                "merchant": "m2",
                "country": "FR",
                "is_fraud": 1,
            }
        )
    return defs, events, labels, draw(st.integers(0, 2**32))


# -- building states -------------------------------------------------------------------------------


_Op = tuple[str, str, Any, dict[str, Any]]  # (tx | label, transaction id, cell, event)


def _ops(
    layout: Layout, entity_id: str, events: list[dict], labels: list[dict], rng: random.Random
) -> list[_Op]:
    """The entity's puts in a random order (a transaction's labels keep their own order)."""
    entity = layout.entity
    ops: list[_Op] = [
        ("tx", e["tx_id"], layout.cell(e), e) for e in events if entity.id_of(e) == entity_id
    ]
    mine = [lb for lb in labels if entity.id_of(lb) == entity_id]
    ops += [("label", lb["tx_id"], layout.label_cell(lb), lb) for lb in mine]
    rng.shuffle(ops)
    per_tx: dict[str, list[dict[str, Any]]] = {}
    for lb in mine:
        per_tx.setdefault(lb["tx_id"], []).append(lb)
    for i, (kind, tx_id, _, _) in enumerate(ops):
        if kind == "label":
            lb = per_tx[tx_id].pop(0)
            ops[i] = (kind, tx_id, layout.label_cell(lb), lb)
    return ops


def _put(state: EntityState, op: _Op) -> None:
    kind, tx_id, cell, _ = op
    if kind == "tx":
        state.put_tx(tx_id, cell)
    else:
        state.put_label(tx_id, cell)


def _full_state(layout: Layout, covered_from: int, ops: list[_Op]) -> EntityState:
    state = EntityState(layout, covered_from)
    for op in ops:
        _put(state, op)
    return state


def _interleaved(
    defs: Definitions, layout: Layout, covered_from: int, ops: list[_Op], rng: random.Random
) -> None:
    """Puts and questions interleaved, as a stream asks: after a put, a transaction already in
    the state is asked about, against the oracle over what was put so far."""
    features = defs.window_features(layout.entity)
    state = EntityState(layout, covered_from)
    events: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for op in ops:
        _put(state, op)
        (events if op[0] == "tx" else labels).append(op[3])
        assert state.newest_us() == max((e["ts"] for e in events), default=0)
        assert state.cells_total() == len(events) + len({lb["tx_id"] for lb in labels})
        if events and rng.random() < 0.5:
            e = rng.choice(events)
            after = sum(bucket_of(x["ts"]) >= bucket_of(e["ts"]) for x in events)
            assert state.count_from(e["ts"]) == after
            got = state.features([Query(e["ts"], tie_key(e["tx_id"]))], features)[0]
            want = _expect(defs, features, e, events, labels)
            assert _bits(got) == _bits(want), ("interleaved", e, list(got), want, features)


def _stored(layout: Layout, bucket: Bucket) -> Bucket:
    """The bucket as a store read gives it back: every cell through its encoding."""
    tx = {i: decode_cell(layout, encode_cell(layout, c))[0] for i, c in bucket.tx.items()}
    labels = {i: decode_label(layout, encode_label(layout, c))[0] for i, c in bucket.labels.items()}
    return Bucket(layout, tx, labels)


def _summaries(state: EntityState) -> dict[int, Aggregates]:
    return {
        b: decode_aggregates(encode_aggregates(bucket.summary()))
        for b, bucket in state.buckets.items()
        if len(bucket)
    }


def _bits(values: Any) -> bytes:
    return np.asarray(values, dtype=np.float64).tobytes()


def _expect(
    defs: Definitions,
    features: tuple[WindowFeature, ...],
    query: dict,
    events: list[dict],
    labels: list[dict],
) -> list[float]:
    return [oracle_value(defs, f, query, events, labels) for f in features]


def _check(defs: Definitions, events: list, labels: list, seed: int, mode: str) -> None:
    """Every entity's state answers every transaction's windows with the oracle's bits."""
    rng = random.Random(seed)
    lookback = max(f.reach_us for f in defs.window_features())
    covered_from = bucket_of(T0 - lookback - DAY)
    for entity in defs.entities:
        features = defs.window_features(entity)
        if not features:
            continue
        layout = Layout.of(defs, entity)
        for entity_id in sorted({entity.id_of(e) for e in events}):
            ops = _ops(layout, entity_id, events, labels, rng)
            if mode == "interleaved":
                _interleaved(defs, layout, covered_from, ops, rng)
                continue
            state = _full_state(layout, covered_from, ops)
            queries = [e for e in events if entity.id_of(e) == entity_id]
            if mode == "trimmed":
                cut = sorted(e["ts"] for e in queries)[len(queries) // 2]
                queries = [e for e in queries if e["ts"] >= cut]
                state.take_changes()
                keep = state.edge_buckets([e["ts"] for e in queries], features)
                state.trim(cut - lookback, keep)
                assert set(state.buckets) <= keep
                assert state.covered_from == bucket_of(cut - lookback)
            if mode in ("summaries", "late"):
                source = state
                summaries = _summaries(source)
                if mode == "late":
                    summaries = _older_summaries(defs, entity, entity_id, ops, covered_from)
                state = EntityState(layout, covered_from, summaries)
                if mode == "late":
                    lacking = {b for b, s in summaries.items() if not s.holds(layout)}
                    assert set(state.incomplete()) == lacking
                    assert lacking <= state.missing(lacking)
            for e in queries:
                q = Query(e["ts"], tie_key(e["tx_id"]))
                if mode in ("summaries", "late"):
                    needed = state.edge_buckets([q.time_us], features)
                    for b in state.missing(needed):
                        found = source.buckets.get(b)
                        state.load(b, _stored(layout, found) if found else Bucket(layout))
                    assert set(state.buckets) <= needed
                got = state.features([q], features)[0]
                want = _expect(defs, features, e, events, labels)
                assert _bits(got) == _bits(want), (mode, entity_id, e, list(got), want, features)
                if mode in ("summaries", "late"):
                    state.trim(T0 - lookback - DAY)  # drops every loaded cell, keeps summaries
                    assert not state.buckets


def _older_summaries(
    defs: Definitions,
    entity: Entity,
    entity_id: str,
    ops: list[_Op],
    covered_from: int,
) -> dict[int, Aggregates]:
    """The summaries the entity's buckets had under the definitions without its last feature
    (for a one-feature entity: with a count over all its events only)."""
    mine = [f for f in defs.window_features(entity)]
    kept = [f for f in defs.features if f not in mine[-1:]]
    if len(mine) == 1:
        kept.append(WindowFeature("OLD", entity, "count", DAY))
    older = Definitions(defs.name, defs.events, defs.labels, defs.entities, tuple(kept))
    layout = Layout.of(older, entity)
    rebuilt = []
    for kind, tx_id, _, source in ops:
        cell = layout.cell(source) if kind == "tx" else layout.label_cell(source)
        rebuilt.append((kind, tx_id, cell, source))
    return _summaries(_full_state(layout, covered_from, rebuilt))


# -- the property ---------------------------------------------------------------------------------

PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("mode", ["all", "interleaved", "summaries", "trimmed", "late"])
@PROPERTY
@given(scenarios())
def test_state_equals_the_oracle(mode: str, scenario: Any) -> None:
    defs, events, labels, seed = scenario
    _check(defs, events, labels, seed, mode)


# Mistakes an implementation could make, each planted in turn: the property must catch it.
def _upper_ignoring_strict(keys: Any, times: Any, hi: int, tie: Any, strict: bool) -> int:
    if tie is None:
        return window_state.bisect.bisect_right(times, hi)
    return window_state.bisect.bisect_right(keys, (hi, tie[0], tie[1]))


def _upper_ignoring_ties(keys: Any, times: Any, hi: int, tie: Any, strict: bool) -> int:
    return window_state.bisect.bisect_right(times, hi)


PLANTED: dict[str, Callable[..., Any]] = {
    "previous event includes the transaction itself": _upper_ignoring_strict,
    "events at the same instant all counted": _upper_ignoring_ties,
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_a_planted_bug_fails_the_property(bug: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(window_state, "_upper", PLANTED[bug])

    @settings(max_examples=300, deadline=None, phases=[Phase.generate], database=None)
    @given(scenarios())
    def prop(scenario: Any) -> None:
        defs, events, labels, seed = scenario
        _check(defs, events, labels, seed, "all")

    with pytest.raises(AssertionError):
        prop()


def test_planted_summary_bug_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A summary whose sum of squares is off by one (a std read from summaries is then wrong)."""
    real = encode_aggregates

    def lossy(summary: Aggregates) -> bytes:
        stats = {k: s._replace(squares=s.squares + 1) for k, s in summary.stats.items()}
        return real(summary._replace(stats=stats))

    monkeypatch.setitem(globals(), "encode_aggregates", lossy)

    @settings(max_examples=300, deadline=None, phases=[Phase.generate], database=None)
    @given(scenarios())
    def prop(scenario: Any) -> None:
        defs, events, labels, seed = scenario
        _check(defs, events, labels, seed, "summaries")

    with pytest.raises(AssertionError):
        prop()


# -- examples -------------------------------------------------------------------------------------


def _one_entity(features: list[dict[str, Any]]) -> tuple[Definitions, Layout]:
    defs = _definitions([{"name": f"F{i}", **f} for i, f in enumerate(features)], "0s")
    return defs, Layout.of(defs, defs.entity("card"))


def _event(i: int, t: int, **values: Any) -> dict[str, Any]:
    base = {"card": "c1", "merchant": "m1", "country": "FR", "amount": 1.0, "qty": 1}
    return {"tx_id": str(i), "ts": t, **base, **values}


def test_a_long_window_over_a_dense_entity_reads_summaries_not_cells() -> None:
    """30 days of a dense card (16 transactions per 15-minute bucket, 46,080 cells): with only
    the edge buckets' cells in memory, every operation equals the oracle; the middle is read
    from 2,880 summaries."""
    ops = ["count", "sum", "mean", "std", "min", "max", "last", "since_previous"]
    features = [
        {
            "entity": "card",
            "op": op,
            "window": "30d",
            **({"field": "amount"} if op in ("sum", "mean", "std", "min", "max", "last") else {}),
        }
        for op in ops
    ]
    features.append({"entity": "card", "op": "distinct", "field": "country", "window": "30d"})
    features.append({"entity": "card", "op": "count", "window": "30d", "where": "amount > 150"})
    defs, layout = _one_entity(features)
    rng = random.Random(7)
    per_bucket = 16
    days = 31
    events: list[dict[str, Any]] = []
    for b in range(days * 96):
        for _ in range(per_bucket):
            t = T0 + b * BUCKET_US + rng.randrange(BUCKET_US)
            events.append(
                _event(
                    len(events) + 1,
                    t,
                    amount=rng.randrange(0, 20_000) / 100,
                    country=rng.choice(["FR", "DE", "US", "IT"]),
                )
            )
    buckets: dict[int, Bucket] = {}
    for e in events:
        buckets.setdefault(bucket_of(e["ts"]), Bucket(layout)).put_tx(e["tx_id"], layout.cell(e))
    summaries = {b: bucket.summary() for b, bucket in buckets.items()}
    state = EntityState(layout, bucket_of(T0) - 1, summaries)
    window_features = defs.window_features()
    queries = [e for e in events[-3 * per_bucket :] if e["ts"] > T0 + 30 * DAY][-3:]
    needed = state.edge_buckets([e["ts"] for e in queries], window_features)
    for b in state.missing(needed):
        state.load(b, buckets[b])
    assert len(needed) <= 4 and sum(len(state.buckets[b]) for b in state.buckets) <= 4 * per_bucket
    assert len(state.nonempty(bucket_of(T0), bucket_of(T0 + days * DAY))) == days * 96
    for e in queries:
        got = state.features([Query(e["ts"], tie_key(e["tx_id"]))], window_features)[0]
        want = _expect(defs, window_features, e, events, [])
        assert _bits(got) == _bits(want)


def test_a_feature_declared_later_needs_the_cells_of_older_summaries() -> None:
    """Summaries written when the card had a count only: a max declared since finds every
    covered bucket incomplete, refuses to answer from them, and answers once they are loaded."""
    _, old_layout = _one_entity([{"entity": "card", "op": "count", "window": "1d"}])
    defs, layout = _one_entity(
        [
            {"entity": "card", "op": "count", "window": "1d"},
            {"entity": "card", "op": "max", "field": "qty", "window": "1d"},
        ]
    )
    events = [_event(i, T0 + i * HOUR, qty=i) for i in range(1, 12)]
    old: dict[int, Bucket] = {}
    new: dict[int, Bucket] = {}
    for e in events:
        b = bucket_of(e["ts"])
        old.setdefault(b, Bucket(old_layout)).put_tx(e["tx_id"], old_layout.cell(e))
        new.setdefault(b, Bucket(layout)).put_tx(e["tx_id"], layout.cell(e))
    stored = {b: decode_aggregates(encode_aggregates(x.summary())) for b, x in old.items()}
    state = EntityState(layout, bucket_of(T0 - DAY), stored)
    assert state.incomplete() == sorted(stored)
    assert state.missing(stored) == set(stored)
    last = events[-1]
    query = Query(last["ts"], tie_key(last["tx_id"]))
    window = defs.window_features()
    edges = {bucket_of(query.time_us - DAY), bucket_of(query.time_us)}
    for b in state.missing(edges):
        state.load(b, new.get(b, Bucket(layout)))
    with pytest.raises(KeyError, match="lacks an accumulator"):
        state.features([query], window)
    needed = state.edge_buckets([query.time_us], window)
    assert needed == edges | set(stored)
    for b in state.missing(needed):
        state.load(b, new[b])
    assert state.incomplete() == []
    got = state.features([query], window)[0]
    assert _bits(got) == _bits(_expect(defs, window, last, events, []))
    assert list(got) == [11.0, 11.0]


# -- the stored encoding --------------------------------------------------------------------------


def test_cells_and_summaries_round_trip_and_tell_what_they_lack() -> None:
    _, layout = _one_entity(
        [
            {"entity": "card", "op": "std", "field": "amount", "window": "1d"},
            {"entity": "card", "op": "distinct", "field": "merchant", "window": "1d"},
            {"entity": "card", "op": "last", "field": "qty", "window": "1d", "where": "hour < 6"},
            {"entity": "card", "op": "label_rate", "window": "1d", "where": "country == 'FR'"},
        ]
    )
    assert layout.fields == ("merchant", "country", "amount", "qty")
    assert layout.kept == ()
    cell = layout.cell(_event(1, T0, merchant="m#1", amount=12.5, qty=-3), revision=7)
    assert decode_cell(layout, encode_cell(layout, cell)) == (cell, ())
    label = layout.label_cell({**_event(1, T0), "is_fraud": 1})
    assert decode_label(layout, encode_label(layout, label)) == (label, ())
    # A cell written when the events had no country or qty yet (a schema that gained them):
    # decoded, with those reported absent.
    _, narrow = _one_entity([{"entity": "card", "op": "sum", "field": "amount", "window": "1d"}])
    narrow = dataclasses.replace(narrow, kept=("merchant",))
    old = Cell(T0, (3.0,), kept=("m1",))
    decoded, lacking = decode_cell(layout, encode_cell(narrow, old))
    assert lacking == ("country", "qty")
    assert decoded.values == ("m1", None, 3.0, None) and decoded.kept == ()
    # Cells keep the whole event: a field no window read before is there for a new feature.
    _, today = _one_entity([{"entity": "card", "op": "sum", "field": "amount", "window": "1d"}])
    assert today.kept == ("merchant", "country", "qty")
    cell_today = today.cell(_event(3, T0, qty=4))
    assert decode_cell(layout, encode_cell(today, cell_today))[1] == ()
    assert layout.event("c1", "2", cell)["card"] == "c1"
    # Big sums of squares survive; a summary lacking an accumulator does not serve the layout.
    big = Stat(3, 2, -(10**30), 10**60)
    summary = Aggregates(2, T0, T0 + 1, 0, {AccKey("amount", None): big}, {})
    back = decode_aggregates(encode_aggregates(summary))
    assert back == summary
    assert not back.holds(layout)
    bucket = Bucket(layout)
    for i in range(1, 6):
        bucket.put_tx(str(i), layout.cell(_event(i, T0 + i, merchant=f"m{i % 2}", qty=i)))
        bucket.put_label(str(i), layout.label_cell({**_event(i, T0 + i), "is_fraud": i % 2}))
    full = bucket.summary()
    assert full.holds(layout) and decode_aggregates(encode_aggregates(full)) == full
    assert encode_aggregates(full)[0] == 2  # the format version
    assert struct.unpack(">d", struct.pack(">d", full.stats[AccKey("amount", None)].low))


def test_composite_key_events_are_rebuilt_from_their_cell() -> None:
    defs = _definitions(
        [
            {"name": "N", "entity": "card_merchant", "op": "count", "window": "1h"},
            {
                "name": "M",
                "entity": "card_merchant",
                "op": "mean",
                "field": "amount",
                "window": "1h",
            },
        ],
        "0s",
    )
    entity = defs.entity("card_merchant")
    layout = Layout.of(defs, entity)
    event = _event(5, T0, merchant="m#%3", amount=7.25, qty=2)
    cell = layout.cell(event, revision=3)
    assert layout.event(entity.id_of(event), "5", cell) == event


def test_format_2_bytes_are_pinned() -> None:
    """Stored cells outlive the code that wrote them: format 2's bytes for every value type
    (float, bool, negative and unbounded integers, non-ASCII text, None) stay what they were
    when the format was introduced, whatever shortcuts the encoder takes."""
    _, layout = _one_entity([{"entity": "card", "op": "sum", "field": "amount", "window": "1d"}])
    layout = dataclasses.replace(
        layout,
        fields=("amount", "flag", "n"),
        kept=("terminal_id", "note", "big"),
        label_fields=("why",),
    )
    cell = Cell(
        1522567145_000_000, (57.16, True, -5), 2**41 + 3, (1.5,), 2**41, ("t#é", None, 2**70)
    )
    data = encode_cell(layout, cell)
    assert data.hex() == (
        "0280b1989d89b1b405838080808040808080808040013ff8000000000000060306616d6f756e7401404c"
        "947ae147ae140304666c6167020203016e0209030b7465726d696e616c5f696403047423c3a903046e6f"
        "7465000303626967028080808080808080808002"
    )
    assert decode_cell(layout, data) == (cell._replace(values=(57.16, 1, -5)), ())
    label = LabelCell(-7, 1, ("x",))
    assert encode_label(layout, label).hex() == "020d02010303776879030178"
    assert decode_label(layout, encode_label(layout, label)) == (label, ())
