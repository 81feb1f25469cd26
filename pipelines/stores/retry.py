"""Retries of transient Google Cloud failures, with exponential backoff (stores and sinks).

Two layers, on purpose: each client call gets a short deadline (``CALL_TIMEOUT_S``, through
the option helpers below) and a single attempt, and ``with_backoff`` retries the failed call
with exponential backoff for a total time budget (``RETRY_BUDGET_S``), logging every retry.
A dependency that is down for a while (an emulator paused in a chaos test, a zonal incident)
costs retries, not data: every write here is an idempotent upsert, so repeating one that timed
out (and may or may not have been applied) is safe.

What the clients do while the server does not answer (measured on the emulators paused with
SIGSTOP; the TCP connection stays open, every call just hangs until its deadline):

- Bigtable ``read_rows``: with the table API each attempt is bounded by ``retry.deadline``
  (default 60 s) but the operation by the table default of 600 s, and the client retries
  internally, so a read hangs through an outage; the feature store calls the generated data
  client with a timeout and no client retry instead: ``DeadlineExceeded`` after the timeout,
  which ``with_backoff`` retries.
- Bigtable ``mutate_rows``: the table API does not raise on a deadline (it returns per-row
  statuses with code 4 after ``retry.deadline``, default 120 s), so the feature store calls the
  generated data client with a timeout and no client retry: ``DeadlineExceeded`` after the
  timeout, and per-row statuses that ``raise_for_statuses`` turns into the exception
  ``with_backoff`` retries (the rows already applied are not sent again).
- Datastore ``put_multi`` and transactions (``begin``, ``commit``): ``DeadlineExceeded`` after
  ``timeout`` (default 60 s, no client retry); ``get_multi``: ``RetryError`` after its default
  60 s retry deadline (cause ``DeadlineExceeded``), or ``DeadlineExceeded`` with
  ``datastore_call_options``.
- A call whose deadline has not passed when the server comes back completes normally.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, TypeVar

__all__ = [
    "CALL_TIMEOUT_S",
    "MAX_DELAY_S",
    "RETRY_BUDGET_S",
    "datastore_call_options",
    "is_transient",
    "raise_for_statuses",
    "with_backoff",
]

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

CALL_TIMEOUT_S = 10.0
"""Deadline of one client call (one attempt); a healthy call takes milliseconds."""
RETRY_BUDGET_S = 120.0
"""How long ``with_backoff`` keeps retrying transient failures (elapsed time from the first
call); an outage of 15 s plus a call deadline fits several times over."""
MAX_DELAY_S = 5.0
"""Cap of the exponential backoff between two attempts."""

# gRPC status codes worth retrying.
_TRANSIENT_GRPC = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "INTERNAL", "RESOURCE_EXHAUSTED")


@cache
def _transient_codes() -> frozenset[int]:
    """The same codes as numbers (Bigtable's per-row statuses carry numbers)."""
    import grpc

    return frozenset(grpc.StatusCode[name].value[0] for name in _TRANSIENT_GRPC)


@cache
def _transient_types() -> tuple[type[BaseException], ...]:
    from google.api_core import exceptions

    types: list[type[BaseException]] = [
        exceptions.ServiceUnavailable,  # 503 / UNAVAILABLE: connection refused or reset
        exceptions.DeadlineExceeded,  # 504 / DEADLINE_EXCEEDED: the server did not answer
        exceptions.GatewayTimeout,
        exceptions.BadGateway,
        exceptions.InternalServerError,
        exceptions.Aborted,  # Datastore transaction contention
        exceptions.TooManyRequests,  # ResourceExhausted is a subclass
        exceptions.RetryError,  # a client's own retry ran out of time (cause: one of the above)
        ConnectionError,
        TimeoutError,
    ]
    try:  # the HTTP transport (GOOGLE_CLOUD_DISABLE_GRPC)
        import requests

        types += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    except ImportError:  # pragma: no cover - requests comes with google-auth
        pass
    return tuple(types)


def is_transient(exc: BaseException) -> bool:
    """True for failures a later attempt may not see: unavailable, deadline exceeded, aborted,
    internal, throttled (google.api_core exceptions, raw gRPC errors with those codes, and
    connection errors and timeouts)."""
    if isinstance(exc, _transient_types()):
        return True
    try:
        import grpc
    except ImportError:  # pragma: no cover - grpcio is a dependency of the clients
        return False
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        code = exc.code()
        return getattr(code, "name", None) in _TRANSIENT_GRPC
    return False


def with_backoff(
    fn: Callable[[], T],
    what: str,
    attempts: int | None = None,
    first_delay: float = 0.1,
    *,
    budget_s: float = RETRY_BUDGET_S,
    max_delay_s: float = MAX_DELAY_S,
    jitter: float = 0.2,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Calls fn, retrying transient failures (``is_transient``) with exponential backoff.

    The delay starts at ``first_delay`` and doubles up to ``max_delay_s`` (each wait shortened
    by up to ``jitter`` of itself, so many workers do not retry in step). It gives up, raising
    the last failure, when the next attempt would start more than ``budget_s`` after the first
    one, or after ``attempts`` calls if given (default: no limit but the budget). Any other
    exception propagates at once. Every retry is logged and reported to
    ``on_retry(attempt, exc, delay)`` (e.g. a metrics counter). Give fn a per-call deadline
    (``CALL_TIMEOUT_S``): the budget is only checked between calls."""
    start = clock()
    delay = first_delay
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            elapsed = clock() - start
            wait = min(delay, max_delay_s)
            wait *= 1.0 - jitter * random.random()
            if (attempts is not None and attempt >= attempts) or elapsed + wait > budget_s:
                _LOGGER.error(
                    "%s failed %d time(s) in %.1fs, giving up: %s: %s",
                    what,
                    attempt,
                    elapsed,
                    type(exc).__name__,
                    exc,
                )
                raise
            _LOGGER.warning(
                "%s failed (%s: %s); retry %d in %.1fs (%.1fs of the %.0fs budget used)",
                what,
                type(exc).__name__,
                exc,
                attempt,
                wait,
                elapsed,
                budget_s,
            )
            if on_retry is not None:
                on_retry(attempt, exc, wait)
            sleep(wait)
            delay = min(delay * 2, max_delay_s)


def raise_for_statuses(statuses: Sequence[Any], what: str = "Bigtable mutate_rows") -> None:
    """Raises the google.api_core exception of the first failed per-row status (``code != 0``)
    that Bigtable's ``mutate_rows`` returns instead of raising: DeadlineExceeded (code 4) when
    the server did not answer in time, so ``with_backoff`` retries it; a permanent error
    (InvalidArgument, NotFound, ...) propagates."""
    from google.api_core import exceptions

    failed = [s for s in statuses if s.code != 0]
    if not failed:
        return
    # A transient code first: one permanent row must not hide a retryable outage, nor the other
    # way round (permanent errors are then raised on the retry that has only those left).
    failed.sort(key=lambda s: s.code not in _transient_codes())
    first = failed[0]
    raise exceptions.from_grpc_status(
        first.code, f"{what}: {len(failed)} of {len(statuses)} rows failed: {first.message}"
    )


def datastore_call_options(timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
    """Keyword arguments for Datastore client calls (``put_multi``, ``get_multi``,
    ``Transaction.begin/commit/rollback``): one attempt of at most ``timeout`` seconds, so
    ``with_backoff`` sees the failure (DeadlineExceeded) instead of the client's own 60 s
    retry (``get_multi``) or 60 s timeout (commit)."""
    from google.api_core.retry import Retry

    return {"retry": Retry(predicate=_never), "timeout": timeout}


def _never(exc: BaseException) -> bool:
    return False
