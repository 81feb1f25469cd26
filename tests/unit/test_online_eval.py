"""The online evaluation without Datastore: what a label and its stored prediction contribute,
the exact figures of a day, and DayQuality's state: a day's labelled scores kept until its labels
are complete, its final figures written, then released (direct DoFn and TestStream); the ticks
that carry the label clock to a day's key; AwaitPredictions' keys; gauges named by role."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that

from pipelines.core.declarations import load_definitions
from pipelines.core.definitions import DAY_US
from pipelines.core.quality import quality
from pipelines.core.schema import Label
from pipelines.transforms import online_eval
from pipelines.transforms.online_eval import (
    LABEL_DELAY_US,
    DayFigures,
    DayQuality,
    DayRow,
    DayRows,
    PendingLabel,
    Scored,
    complete_at_us,
    day_figures,
    label_day,
    scored_from,
)
from tests.events import handbook_label
from tests.unit.dofn_state import Harness

DAY_US_0 = 1_533_686_400_000_000  # 2018-08-08 00:00 UTC
DAY = "2018-08-08"
KEY = f"v1|{DAY}"
MARGIN_S, GRACE_S, IDLE_S, EVERY_S = 86_400.0, 300.0, 2 * 86_400.0, 30.0


def rows(n: int, start: int = 0, champion: bool = True) -> list[DayRow]:
    return [
        DayRow(f"t{i}", f"C{i % 7}", int(i % 5 == 0), (i * 37 % 101) / 101, champion)
        for i in range(start, start + n)
    ]


def due(offset_us: int = 0) -> int:
    """The label clock when the labels of DAY's transactions at ``offset_us`` are due."""
    return DAY_US_0 + offset_us + LABEL_DELAY_US


def test_a_label_counts_for_the_champion_and_for_the_challenger_that_shadowed_it() -> None:
    label = online_eval._pending(
        handbook_label("t1", DAY_US_0 + 5, "C1", "T1", 1),
        online_eval.card_entity(load_definitions()),
    )
    alone = {"model_version": "v1", "score": 0.4, "challenger_version": None}
    assert scored_from(label, alone) == [
        Scored("v1", DAY, "t1", "C1", 1, 0.4, online_eval.CHAMPION)
    ]
    shadowed = {**alone, "challenger_version": "v2", "challenger_score": 0.9}
    assert scored_from(label, shadowed) == [
        Scored("v1", DAY, "t1", "C1", 1, 0.4, "champion"),
        Scored("v2", DAY, "t1", "C1", 1, 0.9, "challenger"),
    ]
    assert label_day(DAY_US_0 - 1) == "2018-08-07"


def test_day_figures_are_exact_and_count_a_redelivered_label_once() -> None:
    kept = rows(60)
    expected = quality([r.card for r in kept], [r.label for r in kept], [r.score for r in kept])
    figures = day_figures("v1", DAY, kept + kept[:10], complete=False)
    assert figures == DayFigures(
        "v1",
        DAY,
        "champion",
        expected["n"],
        expected["frauds"],
        expected["auc"],
        expected["ap"],
        expected["cp100"],
        False,
    )
    assert figures.n == 60
    # The role of a version that only shadowed the champion that day.
    assert day_figures("v2", DAY, rows(5, champion=False), complete=True).role == "challenger"


def test_a_day_is_complete_when_the_label_clock_passes_its_last_due_time_and_the_margin() -> None:
    # The last transaction of the day is due at the end of the day + 7 days.
    assert complete_at_us(DAY, 0) == due(DAY_US)
    assert complete_at_us(DAY, 3_600_000_000) == due(DAY_US) + 3_600_000_000


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The processing time DayQuality reads (now[0])."""
    now = [1_000.0]
    monkeypatch.setattr(online_eval, "time", SimpleNamespace(time=lambda: now[0]))
    return now


def day_quality() -> Harness:
    return Harness(DayQuality(EVERY_S, MARGIN_S, GRACE_S, IDLE_S))


def test_a_day_is_released_once_its_labels_are_complete(clock: list[float]) -> None:
    h = day_quality()
    # Labels of the day arrive while they are due (the label clock: event time + 7 days).
    assert h.process(KEY, DayRows(rows(30), due(3_600_000_000))) == []
    assert h.process(KEY, DayRows(rows(30, start=20), due(20 * 3_600_000_000))) == []
    clock[0] += EVERY_S
    (interim,) = h.fire_due(clock[0], KEY)
    assert (interim.n, interim.complete) == (50, False)
    assert len(h.cells["rows"].read()) == 60  # redeliveries kept until the figures dedupe them
    # A tick from a later day's labels: the clock passes the day's completion (+ the margin).
    h.process(KEY, DayRows([], complete_at_us(DAY, int(MARGIN_S * 1e6))))
    assert h.cells["phase"].read() == online_eval._CLOSING
    # Labels still in flight during the grace count, and the figures go on meanwhile.
    h.process(KEY, DayRows(rows(5, start=50), due(23 * 3_600_000_000)))
    clock[0] += GRACE_S - 1
    assert [(f.n, f.complete) for f in h.fire_due(clock[0], KEY)] == [(55, False)]
    clock[0] += 1
    (final,) = h.fire_due(clock[0], KEY)
    assert final == day_figures("v1", DAY, rows(55), complete=True)
    # Released in the same work item that wrote the final figures: no rows, no clock.
    assert h.cells["rows"].empty and h.cells["clock_us"].empty and h.cells["dirty"].empty
    assert h.cells["phase"].read() == online_eval._RELEASED
    # A label of the released day is left out (counted), not the start of a new day.
    h.process(KEY, DayRows(rows(3, start=100), due(DAY_US - 1)))
    assert h.cells["rows"].empty
    clock[0] += online_eval.KEEP_RELEASED_S
    assert h.fire_due(clock[0], KEY) == []
    assert h.empty  # the marker's time is over too


def test_a_stalled_label_stream_releases_a_day_after_idle_s(clock: list[float]) -> None:
    h = day_quality()
    h.process(KEY, DayRows(rows(10), due()))
    clock[0] += EVERY_S
    h.fire_due(clock[0], KEY)
    clock[0] += IDLE_S  # no label, no tick: the clock never passes the day's completion
    (final,) = h.fire_due(clock[0], KEY)
    assert (final.n, final.complete) == (10, True)
    assert h.cells["rows"].empty
    clock[0] += online_eval.KEEP_RELEASED_S
    h.fire_due(clock[0], KEY)
    assert h.empty


def test_a_tick_creates_no_state_and_a_day_complete_at_its_first_rows_gets_the_grace(
    clock: list[float],
) -> None:
    h = day_quality()
    past = complete_at_us(DAY, int(MARGIN_S * 1e6))
    assert h.process(KEY, DayRows([], past)) == []
    assert h.empty and all(t.at is None for t in h.timers.values())
    # The first rows of a day the clock already shows complete (its labels all waited for
    # their predictions): the day is evaluated, its other labels gathered during the grace.
    h.process(KEY, DayRows(rows(3), past))
    clock[0] += GRACE_S / 2
    h.process(KEY, DayRows(rows(4, start=3), past))
    clock[0] += GRACE_S / 2
    *interim, final = h.fire_due(clock[0], KEY)
    assert [f.complete for f in interim] == [False] and (final.n, final.complete) == (7, True)
    assert h.cells["rows"].empty


def test_day_quality_in_a_stream_writes_figures_then_the_final_ones(monkeypatch) -> None:
    """The same through the streaming DirectRunner: TestStream elements and processing time.
    The runner's processing time is then a test clock that starts at 0: the DoFn reads 0."""
    monkeypatch.setattr(online_eval, "time", SimpleNamespace(time=lambda: 0.0))
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    stream = (
        TestStream()
        .add_elements([(KEY, DayRows(rows(20), due()))])
        .advance_processing_time(EVERY_S + 1)
        .add_elements([(KEY, DayRows([], complete_at_us(DAY, int(MARGIN_S * 1e6))))])
        .add_elements([("v1|2018-08-09", DayRows([], due(2 * DAY_US)))])  # no rows: no state
        .advance_processing_time(GRACE_S)
        .add_elements([(KEY, DayRows(rows(5, start=40), due()))])  # after the release
        .advance_processing_time(EVERY_S + 1)
        .advance_watermark_to_infinity()
    )

    def check(figures: list[DayFigures]) -> None:
        assert [(f.n, f.complete) for f in figures] == [(20, False), (20, True)], figures

    with TestPipeline(options=options) as p:
        out = (
            p
            | stream.with_output_types(beam.typehints.Tuple[str, DayRows])
            | beam.ParDo(DayQuality(EVERY_S, MARGIN_S, GRACE_S, IDLE_S))
        )
        assert_that(out, check)


class FakeLookup:
    """lookup_raw and served_scores without Datastore: every transaction was scored by v1."""

    def __init__(self, missing: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.missing = missing

    def lookup_raw(self, client: Any, project: str, ns: Any, kind: str, ids: list[str]) -> dict:
        return {i: i for i in ids if i not in self.missing}

    @staticmethod
    def served_scores(entity: Any) -> dict[str, Any]:
        return {"model_version": "v1", "score": 0.5, "challenger_version": None}


def label(i: int, event_us: int) -> Label:
    return handbook_label(f"t{i}", event_us, f"C{i}", "T1", i % 2)


def test_lookups_tick_each_complete_day_once_for_the_versions_they_saw(monkeypatch) -> None:
    fake = FakeLookup(missing={"t0"})
    monkeypatch.setattr(online_eval, "lookup_raw", fake.lookup_raw)
    monkeypatch.setattr(online_eval, "served_scores", fake.served_scores)
    fn = online_eval._LookupServed(
        "p", "Prediction", None, 0, MARGIN_S, online_eval.card_entity(load_definitions())
    )
    out = list(
        fn.process(
            [
                label(0, DAY_US_0 - 10),  # 2018-08-07, its prediction not stored yet: waits
                label(1, DAY_US_0 + 10),
                label(2, DAY_US_0 + DAY_US // 2),
            ]
        )
    )
    assert isinstance(out[0], beam.pvalue.TaggedOutput)
    # Rows only (one element for the day's two): nothing complete yet.
    assert [(k, len(v.rows)) for k, v in out[1:]] == [(KEY, 2)]
    assert out[1][1].clock_us == 0  # the clock before them: nothing seen yet
    # Labels of two days later: the clock passes 2018-08-08's last due time + 1 day. The day
    # of the waiting label is ticked too (its rows may come from AwaitPredictions).
    out = list(fn.process([label(3, DAY_US_0 + 2 * DAY_US + 5)]))
    ticks = [(k, v) for k, v in out if not v.rows]
    assert [k for k, _ in ticks] == ["v1|2018-08-07", KEY]
    assert {v.clock_us for _, v in ticks} == {due(2 * DAY_US + 5)}
    assert list(fn.process([label(4, DAY_US_0 + 2 * DAY_US + 6)])) == [
        ("v1|2018-08-10", DayRows([DayRow("t4", "C4", 0, 0.5, True)], due(2 * DAY_US + 5)))
    ]  # ticked once per instance


def test_a_backlog_batch_spanning_days_keeps_its_earliest_day(clock, monkeypatch) -> None:
    """The first labels of a day and labels of days later in one lookup batch (a backlog):
    the day's rows are kept (they carry the clock from before the batch), and the tick that
    follows them completes the day."""
    fake = FakeLookup()
    monkeypatch.setattr(online_eval, "lookup_raw", fake.lookup_raw)
    monkeypatch.setattr(online_eval, "served_scores", fake.served_scores)
    lookup = online_eval._LookupServed(
        "p", "Prediction", None, 0, MARGIN_S, online_eval.card_entity(load_definitions())
    )
    batch = [label(i, DAY_US_0 + i * 3_600_000_000) for i in range(5)]
    batch += [label(100 + i, DAY_US_0 + 3 * DAY_US + i) for i in range(3)]
    h = day_quality()
    for key, value in lookup.process(batch):
        if key == KEY:
            h.process(key, value)
    assert len(h.cells["rows"].read()) == 5
    assert h.cells["phase"].read() == online_eval._CLOSING  # the tick after the rows
    clock[0] += GRACE_S
    *_, final = h.fire_due(clock[0], KEY)
    assert (final.n, final.complete) == (5, True)


@pytest.mark.parametrize("buckets", [0, 64])
def test_a_label_without_its_prediction_waits_on_the_keyed_stages_key(monkeypatch, buckets) -> None:
    from pipelines.core.routing import route

    fake = FakeLookup(missing={"t7"})
    monkeypatch.setattr(online_eval, "lookup_raw", fake.lookup_raw)
    monkeypatch.setattr(online_eval, "served_scores", fake.served_scores)
    fn = online_eval._LookupServed(
        "p", "Prediction", None, buckets, MARGIN_S, online_eval.card_entity(load_definitions())
    )
    (waiting,) = [
        o for o in fn.process([label(7, DAY_US_0)]) if isinstance(o, beam.pvalue.TaggedOutput)
    ]
    key, pending = waiting.value
    # Dataflow (0 buckets): the transaction id itself; the DirectRunner: its bucket.
    assert key == route("t7", buckets) == ("t7" if buckets == 0 else key)
    assert pending == PendingLabel("t7", DAY_US_0, "C7", 1, 1)


def test_gauges_are_named_by_role_whatever_the_versions_and_days() -> None:
    figures = [
        DayFigures(
            version,
            day,
            "challenger" if version == "v3" else "champion",
            100,
            5,
            0.9,
            0.5,
            0.25,
            True,
        )
        for version in ("v1", "v2", "v3")
        for day in ("2018-08-08", "2018-08-09", "2018-09-30")
    ]
    p = TestPipeline(runner="DirectRunner")
    _ = p | beam.Create(figures) | beam.Map(online_eval.set_day_gauges)
    result = p.run()
    result.wait_until_finish()
    gauges = result.metrics().query()["gauges"]
    names = {g.key.metric.name for g in gauges}
    assert names == {
        f"{m}/{role}"
        for m in ("auc_ppm", "ap_ppm", "cp100_ppm", "n", "day_start_s")
        for role in ("champion", "challenger")
    }
    latest = {g.key.metric.name: g.committed.value for g in gauges}
    days = {(DAY_US_0 + d * DAY_US) // 1_000_000 for d in (0, 1, 53)}
    assert latest["day_start_s/champion"] in days and latest["ap_ppm/challenger"] == 500_000
