"""with_backoff: transient failures retried with exponential backoff for a time budget (a fake
clock and sleep keep these tests instant)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
import pytest
from google.api_core import exceptions
from google.rpc import status_pb2

from pipelines.stores.retry import (
    CALL_TIMEOUT_S,
    datastore_call_options,
    is_transient,
    raise_for_statuses,
    with_backoff,
)


class FakeTime:
    """A clock that only moves when something sleeps (or a call 'takes' time)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class RawRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__()
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


TRANSIENT: list[Callable[[], BaseException]] = [
    lambda: exceptions.ServiceUnavailable("emulator unreachable"),
    lambda: exceptions.DeadlineExceeded("Deadline Exceeded"),
    lambda: exceptions.RetryError("Timeout of 60.0s exceeded", exceptions.DeadlineExceeded("x")),
    lambda: exceptions.Aborted("transaction contention"),
    lambda: exceptions.InternalServerError("internal"),
    lambda: exceptions.ResourceExhausted("throttled"),
    lambda: exceptions.TooManyRequests("throttled"),
    lambda: RawRpcError(grpc.StatusCode.UNAVAILABLE),
    lambda: RawRpcError(grpc.StatusCode.DEADLINE_EXCEEDED),
    lambda: ConnectionResetError("reset"),
    lambda: TimeoutError("timed out"),
]


def flaky(
    failures: int,
    make: Callable[[], BaseException],
    took: float = 0.0,
    t: FakeTime | None = None,
) -> tuple[Callable[[], str], dict[str, int]]:
    """A function failing `failures` times with make() (each call taking `took` s on t's
    clock), then returning 'ok'; and its call counter."""
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if t is not None:
            t.now += took
        if calls["n"] <= failures:
            raise make()
        return "ok"

    return fn, calls


@pytest.mark.parametrize("make", TRANSIENT, ids=lambda m: type(m()).__name__)
def test_each_transient_type_is_retried_until_success(make: Callable[[], BaseException]) -> None:
    t = FakeTime()
    fn, calls = flaky(4, make)
    retries: list[int] = []
    result = with_backoff(
        fn,
        "op",
        jitter=0,
        on_retry=lambda n, exc, delay: retries.append(n),
        clock=t.clock,
        sleep=t.sleep,
    )
    assert result == "ok" and calls["n"] == 5
    assert retries == [1, 2, 3, 4]
    assert t.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8])


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad row"),
        KeyError("x"),
        exceptions.InvalidArgument("bad request"),
        exceptions.NotFound("no table"),
        exceptions.PermissionDenied("no"),
        RawRpcError(grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_permanent_failure_propagates_at_once(exc: BaseException) -> None:
    t = FakeTime()
    calls = {"n": 0}

    def fn() -> None:
        calls["n"] += 1
        raise exc

    with pytest.raises(type(exc)):
        with_backoff(fn, "op", clock=t.clock, sleep=t.sleep)
    assert calls["n"] == 1 and t.sleeps == []
    assert not is_transient(exc)


def test_backoff_is_exponential_and_capped() -> None:
    t = FakeTime()
    fn, _ = flaky(9, lambda: exceptions.ServiceUnavailable("down"))
    assert with_backoff(fn, "op", jitter=0, max_delay_s=5.0, clock=t.clock, sleep=t.sleep) == "ok"
    assert t.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])


def test_jitter_only_shortens_the_waits() -> None:
    t = FakeTime()
    fn, _ = flaky(6, lambda: exceptions.ServiceUnavailable("down"))
    with_backoff(fn, "op", jitter=0.5, clock=t.clock, sleep=t.sleep)
    for got, nominal in zip(t.sleeps, [0.1, 0.2, 0.4, 0.8, 1.6, 3.2], strict=True):
        assert nominal * 0.5 <= got <= nominal


def test_a_15s_outage_of_timed_out_calls_is_ridden_out() -> None:
    """The server hangs for 15 s: every call started in that window times out after
    CALL_TIMEOUT_S; the first one started after it succeeds."""
    t = FakeTime()
    back_at = t.now + 15.0
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if t.now < back_at:
            t.now += CALL_TIMEOUT_S
            raise exceptions.DeadlineExceeded("Deadline Exceeded")
        return "ok"

    assert with_backoff(fn, "op", clock=t.clock, sleep=t.sleep) == "ok"
    assert calls["n"] == 3  # t=0 -> 10, 10.1 -> 20.1, then ok


def test_the_time_budget_is_honoured() -> None:
    t = FakeTime()
    start = t.now
    fn, calls = flaky(10**6, lambda: exceptions.DeadlineExceeded("down"), took=CALL_TIMEOUT_S, t=t)
    with pytest.raises(exceptions.DeadlineExceeded):
        with_backoff(
            fn, "op", budget_s=120.0, max_delay_s=5.0, jitter=0, clock=t.clock, sleep=t.sleep
        )
    # No attempt starts after the budget; the last one may run its own deadline past it.
    assert t.now - start <= 120.0 + CALL_TIMEOUT_S
    assert t.now - start - CALL_TIMEOUT_S > 120.0 - CALL_TIMEOUT_S - 5.0
    assert calls["n"] == 10  # at t = 0, 10.1, 20.3, 30.7, 41.5, 53.1, 66.3, 81.3, 96.3, 111.3


def test_fast_failures_keep_retrying_for_the_whole_budget() -> None:
    """Connection refused comes back at once: the budget, not a count of attempts, decides."""
    t = FakeTime()
    fn, calls = flaky(10**6, lambda: exceptions.ServiceUnavailable("refused"))
    with pytest.raises(exceptions.ServiceUnavailable):
        with_backoff(fn, "op", budget_s=60.0, jitter=0, clock=t.clock, sleep=t.sleep)
    assert 55.0 < sum(t.sleeps) <= 60.0
    assert calls["n"] == len(t.sleeps) + 1


def test_attempts_still_caps_the_number_of_calls() -> None:
    """Backward compatible: with_backoff(fn, what, attempts, first_delay)."""
    t = FakeTime()
    fn, calls = flaky(10**6, lambda: exceptions.Aborted("contention"))
    with pytest.raises(exceptions.Aborted):
        with_backoff(fn, "op", 3, 0.5, jitter=0, clock=t.clock, sleep=t.sleep)
    assert calls["n"] == 3 and t.sleeps == pytest.approx([0.5, 1.0])


def test_success_needs_no_sleep_and_retries_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    t = FakeTime()
    assert with_backoff(lambda: 42, "op", clock=t.clock, sleep=t.sleep) == 42
    assert t.sleeps == []
    fn, _ = flaky(2, lambda: exceptions.DeadlineExceeded("slow"))
    with caplog.at_level(logging.WARNING, logger="pipelines.stores.retry"):
        with_backoff(fn, "Bigtable write", clock=t.clock, sleep=t.sleep)
    retries = [r for r in caplog.records if "Bigtable write failed" in r.getMessage()]
    assert len(retries) == 2 and "DeadlineExceeded" in retries[0].getMessage()


def test_raise_for_statuses() -> None:
    ok = status_pb2.Status(code=0)
    raise_for_statuses([ok, ok])
    deadline = status_pb2.Status(code=4, message="Deadline Exceeded")
    invalid = status_pb2.Status(code=3, message="no such family")
    with pytest.raises(exceptions.DeadlineExceeded) as caught:
        raise_for_statuses([ok, invalid, deadline])
    assert "2 of 3 rows failed" in str(caught.value) and is_transient(caught.value)
    with pytest.raises(exceptions.InvalidArgument) as permanent:
        raise_for_statuses([ok, invalid])
    assert not is_transient(permanent.value)


def test_call_options() -> None:
    ds = datastore_call_options(3)
    assert ds["timeout"] == 3
    assert not ds["retry"]._predicate(exceptions.DeadlineExceeded("x"))  # a single attempt
