"""What ``rillet run`` prints while the job runs (pipelines/app/job_status.py)."""

from __future__ import annotations

from types import SimpleNamespace

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.app.job_status import JobStatus, ready_lines, status_from, status_line


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
        "| latency 300 ms"
    )
    # Nothing predicted in the interval: no latency to show.
    assert status_line(now, now, seconds=10).endswith("| latency -")


def test_ready_lines_name_the_inputs_the_model_and_the_outputs() -> None:
    options = PipelineOptions(
        ["--project=p", "--model_dir=models", "--labels_subscription=projects/q/subscriptions/l"]
    )
    lines = ready_lines(options, "v7")
    text = "\n".join(lines)
    assert lines[0].startswith("ready: reading projects/p/subscriptions/transactions-rillet")
    assert "projects/q/subscriptions/l" in text  # a full path is kept
    assert "model v7 from models" in text
    assert "projects/p/topics/predictions and Datastore kind Prediction" in text
    assert "dead letters -> projects/p/topics/dead-letter" in text
    assert "Ctrl-C" in text
