"""local_runner.recovery: what is in flight, when it is finished, and the checkpoint it gives."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipelines.local_runner.recovery import (
    SEEK_MARGIN_US,
    CheckpointWriter,
    Replay,
    Tracker,
    read_checkpoint,
    write_checkpoint,
)

TX, LB = "projects/p/subscriptions/transactions-rillet", "projects/p/subscriptions/labels-rillet"


@pytest.fixture
def tracker() -> Tracker:
    t = Tracker()
    t.enable()
    return t


def test_disabled_tracker_records_nothing() -> None:
    t = Tracker()
    t.pulled(TX, [("1", 100)])
    assert t.in_flight() == 0 and t.hold([(TX, "1")], 2) == 0 and t.resume_points() == {}


def test_resume_point_is_the_oldest_unfinished_message(tracker: Tracker) -> None:
    tracker.pulled(TX, [("1", 100), ("2", 200), ("3", 300)])
    tracker.pulled(LB, [("9", 150)])
    tracker.finish([(TX, "1")])
    assert tracker.resume_points() == {TX: 200, LB: 150}
    tracker.finish([(TX, "2"), (TX, "3"), (LB, "9")])
    # Nothing in flight: resume from the newest message pulled (redelivery is idempotent).
    assert tracker.resume_points() == {TX: 300, LB: 150}
    assert tracker.in_flight() == 0 and tracker.finished_count == 4


def test_a_reopened_message_holds_the_checkpoint_until_its_new_output_is_out(
    tracker: Tracker,
) -> None:
    # A label that waited (its message finished) is dead-lettered later: until that dead letter
    # is published, a crash must replay it.
    tracker.pulled(LB, [("7", 100), ("8", 500)])
    tracker.finish([(LB, "7"), (LB, "8")])
    assert tracker.resume_points() == {LB: 500}
    tracker.reopen((LB, "7"), 100)
    token = tracker.hold([(LB, "7")], 1)
    assert tracker.resume_points() == {LB: 100}
    tracker.release(token)
    assert tracker.resume_points() == {LB: 500}
    tracker.reopen((LB, "x"), 0)  # no publish time: nothing to seek to
    assert tracker.in_flight() == 0


def test_a_group_finishes_when_all_its_outputs_are_released(tracker: Tracker) -> None:
    tracker.pulled(TX, [("1", 100), ("2", 200)])
    token = tracker.hold([(TX, "1"), (TX, "2")], outputs=2)
    assert token
    tracker.release(token)
    assert tracker.in_flight() == 2  # one output still on its way: not finished
    tracker.release(token)
    assert tracker.in_flight() == 0
    tracker.release(token)  # a second release of a finished group is harmless
    assert tracker.finished_count == 2


def test_a_group_without_outputs_finishes_at_once(tracker: Tracker) -> None:
    tracker.pulled(TX, [("1", 100)])
    assert tracker.hold([(TX, "1")], outputs=0) == 0
    assert tracker.in_flight() == 0


def test_admit_applies_backpressure() -> None:
    t = Tracker()
    t.enable(max_in_flight=3)
    assert t.admit() == 3
    t.pulled(TX, [("1", 1), ("2", 2), ("3", 3)])
    assert t.admit() == 0
    t.finish([(TX, "2")])
    assert t.admit() == 1


def test_checkpoint_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "checkpoint.json"
    assert read_checkpoint(path) == {}
    write_checkpoint(path, {TX: 123})
    write_checkpoint(path, {TX: 456, LB: 7})
    assert read_checkpoint(path) == {TX: 456, LB: 7}
    assert not list(path.parent.glob("*.tmp"))
    assert "written_at_us" in json.loads(path.read_text())


def test_writer_keeps_points_of_subscriptions_not_pulled_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.local_runner.recovery as recovery

    fresh = Tracker()
    fresh.enable()
    monkeypatch.setattr(recovery, "_TRACKER", fresh)
    path = tmp_path / "checkpoint.json"
    write_checkpoint(path, {TX: 100, LB: 50})  # left by the killed job
    writer = CheckpointWriter(path)
    fresh.pulled(TX, [("7", 120)])
    writer.write_once()
    assert read_checkpoint(path) == {TX: 120, LB: 50}


def test_an_enabled_tracker_receives_the_graphs_completion_reports() -> None:
    from pipelines.core.completion import completion, install

    install(None)  # whatever an earlier test enabled
    t = Tracker()
    assert completion().hold([("s", "m")], 1) == 0  # nobody listens by default
    t.enable()
    try:
        t.pulled("s", [("m", 5)])
        token = completion().hold([("s", "m")], 1)
        assert token and t.in_flight() == 1
        chained = completion().chain([token], 2)  # a stage turned it into two outputs
        completion().release(chained)
        assert t.in_flight() == 1  # one of them has not reached its sink yet
        completion().release(chained)
        assert t.in_flight() == 0
    finally:
        t.reset()
    assert completion().hold([("s", "m")], 1) == 0


def test_a_restart_counts_what_its_predecessor_had_pulled_and_comes_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint keeps the newest publish time pulled per subscription; after the seek, the
    restarted job counts the messages published no later than that (they come again) until a
    pull is empty or goes past it by more than the seek margin."""
    import pipelines.local_runner.recovery as recovery

    old = Tracker()
    old.enable()
    monkeypatch.setattr(recovery, "_TRACKER", old)
    path = tmp_path / "checkpoint.json"
    writer = CheckpointWriter(path)
    old.pulled(TX, [("1", 100), ("2", 200), ("3", 300)])
    old.hold([(TX, "2")], 1)  # in flight when the job dies: the resume point is its time
    old.finish([(TX, "1"), (TX, "3")])
    old.pulled(LB, [("9", 250)])
    writer.write_once()
    saved = json.loads(path.read_text())
    assert saved["resume_from_us"] == {TX: 200, LB: 250}
    assert saved["newest_pulled_us"] == {TX: 300, LB: 250}

    replay = Replay()
    monkeypatch.setattr(recovery, "_REPLAY", replay)
    new = Tracker()
    new.enable()
    monkeypatch.setattr(recovery, "_TRACKER", new)
    from google.cloud import pubsub_v1

    sought: list[Any] = []
    fake = SimpleNamespace(seek=lambda request: sought.append(request), close=lambda: None)
    monkeypatch.setattr(pubsub_v1, "SubscriberClient", lambda: fake)
    assert recovery.seek_to_checkpoint(path, [TX, LB], margin_us=2) == {TX: 198, LB: 248}
    assert [r["subscription"] for r in sought] == [TX, LB]
    assert replay.resumed and not replay.done
    assert replay.checkpoint_written_us == saved["written_at_us"]
    new.pulled(TX, [("2", 200), ("3", 300), ("4", 400)])  # 4: new, within the margin
    new.caught_up(LB)  # nothing (more) on the labels subscription
    assert not replay.done  # 400 is within 2 s of 300: an older message may still come
    new.pulled(TX, [("5", 300 + SEEK_MARGIN_US + 1)])
    assert replay.done
    assert replay.counts() == {TX: 2, LB: 0}
