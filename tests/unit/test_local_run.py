"""The pure parts of pipelines.app.local_run: the wait loop (on a fake clock), latencies,
percentiles, and the job arguments of a fresh run (no emulator)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from pipelines.app.local_run import LocalRun, latency_ms, percentiles, wait_until


class FakeClock:
    """time.monotonic and time.sleep for wait_until: sleeping advances the clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_wait_until_checks_before_each_poll_and_returns_the_seconds_since_start() -> None:
    clock, checks, done = FakeClock(), [], iter([False, False, True])
    waited = wait_until(
        lambda: next(done), 10, "x", lambda: checks.append(clock.now), 0.5, clock, clock.sleep
    )
    assert (waited, checks) == (1.0, [100.0, 100.5, 101.0])
    done = iter([True])
    assert wait_until(lambda: next(done), 10, "x", None, 0.5, clock, start=99.0) == 2.0


def test_wait_until_raises_at_the_timeout_describing_the_state_then() -> None:
    clock, polls = FakeClock(), [0]

    def done() -> bool:
        polls[0] += 1
        return False

    with pytest.raises(TimeoutError, match=r"^only 7 of 9 within 3 s$"):
        wait_until(done, 3, lambda: f"only {polls[0]} of 9", None, 0.5, clock, clock.sleep)
    assert clock.now == 103.0  # polled at 0, 0.5, ..., 3.0


def test_wait_until_stops_when_the_job_died() -> None:
    def dead() -> None:
        raise RuntimeError("the streaming pipeline exited (1); see pipeline.log")

    with pytest.raises(RuntimeError, match=r"pipeline\.log"):
        wait_until(lambda: False, 10, "x", dead)
    with pytest.raises(TimeoutError, match=r"^nothing within 0 s$"):  # no job: no log named
        LocalRun(Path("unused")).wait_for(lambda: False, 0, "nothing")


def test_latency_is_processing_minus_publish_time_and_percentiles() -> None:
    message = {
        "publish_time": "2024-01-01T00:00:00.100000Z",
        "processing_time": "2024-01-01T00:00:01.350000Z",
    }
    assert latency_ms(message) == pytest.approx(1250.0)
    assert latency_ms({**message, "processing_time": "yesterday"}) is None
    assert latency_ms({"publish_time": "2024-01-01T00:00:00Z"}) is None
    assert percentiles([float(x) for x in range(1, 101)]) == pytest.approx((50.5, 95.05, 99.01))
    assert all(math.isnan(p) for p in percentiles([]))


def test_job_args_point_a_fresh_run_at_its_own_resources() -> None:
    run = LocalRun(Path("unused"), private=False)
    assert run.job_args() == ["--project=rillet-local", "--monitor_dir=unused/monitor"]
    run.fresh, run.datastore_kind = "x", "Run_x_1"
    run.topology = dataclasses.replace(
        run.topology, transactions_subscription="x-tx-1", labels_subscription="x-lb-1"
    )
    assert run.job_args()[2:] == [
        "--transactions_subscription=x-tx-1",
        "--labels_subscription=x-lb-1",
        "--bigtable_table=features",
        "--datastore_kind=Run_x_1",
    ]
