"""Retries of transient Google Cloud failures, with exponential backoff (stores and sinks)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["with_backoff"]

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")


def with_backoff(fn: Callable[[], T], what: str, attempts: int = 10, first_delay: float = 0.1) -> T:
    """Calls fn, retrying transient gRPC/HTTP failures (unavailable, deadline, internal, aborted,
    throttled) with exponential backoff capped at 10 s; the last failure is raised."""
    from google.api_core import exceptions

    transient = (
        exceptions.ServiceUnavailable,
        exceptions.DeadlineExceeded,
        exceptions.InternalServerError,
        exceptions.Aborted,
        exceptions.TooManyRequests,
        exceptions.RetryError,
    )
    delay = first_delay
    for attempt in range(attempts):
        try:
            return fn()
        except transient as exc:
            if attempt == attempts - 1:
                raise
            _LOGGER.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    raise AssertionError("unreachable")
