"""What ``rillet run`` prints while the job runs (pipelines/app/job_status.py)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.app.job_status import (
    JobStatus,
    change_lines,
    read_status,
    ready_lines,
    resumed_line,
    serving_now,
    status_from,
    status_line,
)
from pipelines.transforms.model_serving import Served, served_record

T0 = time.mktime((2026, 12, 7, 21, 3, 12, 0, 0, -1))  # 21:03:12 local time


def test_status_counts_the_jobs_counters_and_the_interval() -> None:
    before = status_from(
        {"transactions_valid": 100, "labels_valid": 50, "predictions_written": 90},
        SimpleNamespace(sum=9_000, count=90),
    )
    now = status_from(
        {
            "transactions_valid": 300,
            "labels_valid": 150,
            "transactions_dead_lettered": 2,
            "labels_dead_lettered": 1,
            "predictions_written": 290,
            "dead_letters_published": 5,
            "feature_batches": 7,  # not shown
        },
        SimpleNamespace(sum=69_000, count=290),
    )
    assert now == JobStatus(300, 150, 3, 290, 5, 69_000, 290)
    line = status_line(now, before, seconds=10)
    assert line == (
        "events in 450 (300 transactions, 150 labels; 30/s) | predictions 290 | dead letters 5 "
        "| latency 300 ms | model - (nothing scored yet)"
    )
    # Nothing predicted in the interval: no latency to show.
    assert "| latency - |" in status_line(now, now, seconds=10)


def test_status_names_the_pair_served_now_and_the_dead_letters_replayed() -> None:
    served = [
        served_record(3, T0, "v1", "v2"),
        served_record(4, T0 + 60, "v2", None),
        served_record(4, T0 + 58, "v2", None),  # another worker swapped first
        "not a record",
    ]
    now = status_from({"dead_letters_published": 45, "dead_letters_redelivered": 40}, None, served)
    assert now.served == (Served(3, T0, "v1", "v2"), Served(4, T0 + 58, "v2", None))
    assert serving_now(now) == Served(4, T0 + 58, "v2", None)
    line = status_line(now, JobStatus(), seconds=10)
    assert "| dead letters 45 (40 replayed) |" in line
    assert line.endswith("| model v2 (challenger none)")
    both = status_from({}, None, [served_record(3, T0, "v1", "v2")])
    assert status_line(both, both, 10).endswith("| model v1 (challenger v2)")


def test_a_promotion_prints_one_line_from_to_and_when() -> None:
    announced = Served(3, 0.0, "v1", "v2")  # what the ready line named
    # The first pair scored is the announced one: nothing to say.
    lines, last = change_lines(announced, [Served(3, T0 - 600, "v1", "v2")])
    assert lines == [] and last == Served(3, T0 - 600, "v1", "v2")
    # The challenger promoted (no new challenger), then a new challenger, then a rollback.
    served = [
        Served(3, T0 - 600, "v1", "v2"),
        Served(4, T0, "v2", None),
        Served(5, T0 + 5, "v2", "v3"),
        Served(6, T0 + 10, "v1", "v3"),
    ]
    lines, last = change_lines(last, served)
    assert lines == [
        "21:03:12 champion v1 -> v2 (promoted), challenger v2 -> none",
        "21:03:17 champion v2 (unchanged), challenger none -> v3",
        "21:03:22 champion v2 -> v1, challenger v3",
    ]
    assert last == served[-1]
    assert change_lines(last, served) == ([], last)  # said once


def test_a_swap_between_the_ready_line_and_the_first_batch_is_announced() -> None:
    lines, _ = change_lines(Served(3, 0.0, "v1", None), [Served(4, T0, "v2", None)])
    assert lines == ["21:03:12 champion v1 -> v2, challenger none"]


def test_read_status_reads_the_serving_metric_of_a_running_job() -> None:
    def metric(name: str, value: Any) -> Any:
        return SimpleNamespace(
            key=SimpleNamespace(metric=SimpleNamespace(name=name)), committed=value
        )

    class Result:
        def metrics(self) -> Any:
            return SimpleNamespace(
                query=lambda _filter: {
                    "counters": [metric("transactions_valid", 7)],
                    "distributions": [],
                    "string_sets": [metric("serving_models", {served_record(2, T0, "v9", "v10")})],
                }
            )

    status = read_status(Result())
    assert status.transactions == 7
    assert serving_now(status) == Served(2, T0, "v9", "v10")


def test_the_resumed_line_says_when_and_how_many_came_again() -> None:
    assert resumed_line(T0, {"transactions-rillet": 1_200, "labels-rillet": 34}) == (
        "resumed from checkpoint at 21:03:12 (1,234 messages replayed: 1,200 "
        "transactions-rillet, 34 labels-rillet)"
    )
    assert resumed_line(T0, {"transactions-rillet": 0}) == (
        "resumed from checkpoint at 21:03:12 (0 messages replayed)"
    )


def test_ready_lines_name_the_inputs_the_model_and_the_outputs() -> None:
    options = PipelineOptions(
        ["--project=p", "--model_dir=models", "--labels_subscription=projects/q/subscriptions/l"]
    )
    lines = ready_lines(options, "v7")
    text = "\n".join(lines)
    assert lines[0].startswith("ready: reading projects/p/subscriptions/transactions-rillet")
    assert "projects/q/subscriptions/l" in text  # a full path is kept
    assert "model v7 from models" in text
    assert "challenger v8 shadows it" in "\n".join(ready_lines(options, "v7", "v8"))
    assert "no challenger" in text
    pinned = ready_lines(PipelineOptions(["--model_version=v7"]), "v7")
    assert "(pinned)" in "\n".join(pinned) and "challenger" not in "\n".join(pinned)
    assert "projects/p/topics/predictions and Datastore kind Prediction" in text
    assert "dead letters -> projects/p/topics/dead-letter" in text
    assert "Ctrl-C" in text
