"""Local-runner tuning: how the DirectRunner pulls from Pub/Sub.

Beam's BundleBasedDirectRunner (what the DirectRunner falls back to for Pub/Sub pipelines when
Prism cannot be downloaded) pulls at most 10 messages per bundle with a blocking pull of up to
30 s, and schedules new source work only when nothing else is executing. With two sources
(transactions and labels), an empty one blocks the other for 30 s at a time, and the 10-message
bundles make every downstream step pay its per-bundle cost 10 messages at a time. This module
wraps the subscriber client that runner uses, so that each pull returns at once with up to N
available messages (and idles briefly when there are none). It changes nothing on Dataflow.

The wrapper is also where crash recovery and backpressure hook in (local_runner.recovery): every
pulled message is recorded before the runner acknowledges it, and no more is pulled while the
tracker's in-flight limit is reached (the backlog then waits in Pub/Sub, not in memory).

It also keeps the figures of the local monitoring snapshot (``pull_stats``, read by
local_runner.snapshot): per subscription the messages pulled, the time of the last pull and the
age of the oldest message of the last non-empty pull. Beam's local reader acknowledges what it
pulls, so that oldest message was the oldest unacknowledged one just before the pull; an empty
pull means nothing was waiting.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pipelines.core.messages import publish_time_us
from pipelines.local_runner.recovery import tracker

__all__ = ["PullStats", "SubscriptionPulls", "pull_stats", "tune_direct_runner_pubsub"]

_STATE: dict[str, Any] = {}


@dataclass(frozen=True)
class SubscriptionPulls:
    """What the puller saw of one subscription (times in seconds since the epoch)."""

    pulled: int = 0
    last_pull_s: float = 0.0  # the last pull, empty or not
    last_pull_empty: bool = True
    oldest_unacked_age_s: float | None = None  # at the last non-empty pull
    newest_publish_s: float | None = None  # the newest publish time ever pulled

    def backlog_age_s(self) -> float | None:
        """The oldest unacknowledged message's age at the last pull: 0 when it came back empty,
        None before any pull."""
        if not self.last_pull_s:
            return None
        return 0.0 if self.last_pull_empty else self.oldest_unacked_age_s


class PullStats:
    """Per subscription pull figures (process-wide, thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._subs: dict[str, SubscriptionPulls] = {}

    def record(self, subscription: str, publish_times_us: Iterable[int]) -> None:
        """One pull of ``subscription`` returned messages with these publish times (µs; 0 for
        none), or nothing (an empty iterable)."""
        now = self._clock()
        stamps = list(publish_times_us)
        count = len(stamps)
        times = [t / 1_000_000 for t in stamps if t > 0]
        with self._lock:
            before = self._subs.get(subscription, SubscriptionPulls())
            if not count:
                self._subs[subscription] = SubscriptionPulls(
                    before.pulled, now, True, before.oldest_unacked_age_s, before.newest_publish_s
                )
                return
            newest = max(times) if times else None
            if before.newest_publish_s is not None and (
                newest is None or before.newest_publish_s > newest
            ):
                newest = before.newest_publish_s
            self._subs[subscription] = SubscriptionPulls(
                pulled=before.pulled + count,
                last_pull_s=now,
                last_pull_empty=False,
                oldest_unacked_age_s=max(0.0, now - min(times)) if times else 0.0,
                newest_publish_s=newest,
            )

    def snapshot(self) -> dict[str, SubscriptionPulls]:
        with self._lock:
            return dict(self._subs)

    def reset(self) -> None:
        with self._lock:
            self._subs.clear()


_PULL_STATS = PullStats()


def pull_stats() -> PullStats:
    """The process-wide pull figures (the DirectRunner pulls in this process)."""
    return _PULL_STATS


class _ImmediatePullClient:
    def __init__(self, client: Any, max_messages: int, idle_sleep_s: float) -> None:
        self._client = client
        self._max = max_messages
        self._idle = idle_sleep_s

    def pull(self, subscription: str, max_messages: int = 10, timeout: float | None = None) -> Any:
        # The emulator answers at most 100 messages per pull: pull again (without waiting) until
        # the bundle holds max_messages or the subscription has nothing more right now.
        wanted = min(self._max, tracker().admit())
        if wanted <= 0:  # backpressure: too much in flight
            from google.cloud import pubsub_v1

            time.sleep(self._idle)
            return pubsub_v1.types.PullResponse()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # return_immediately
            response = self._pull(subscription, wanted, timeout)
            part = response
            while part.received_messages and len(response.received_messages) < wanted:
                part = self._pull(subscription, wanted - len(response.received_messages), timeout)
                response.received_messages.extend(part.received_messages)
        if not response.received_messages:
            pull_stats().record(subscription, ())
            tracker().caught_up(subscription)
            time.sleep(self._idle)
        else:
            pairs = [
                (rm.message.message_id, publish_time_us(rm.message))
                for rm in response.received_messages
            ]
            pull_stats().record(subscription, [us for _, us in pairs])
            # Recorded before Beam acknowledges them: see pipelines.local_runner.recovery.
            tracker().pulled(subscription, pairs)
        return response

    def _pull(self, subscription: str, max_messages: int, timeout: float | None) -> Any:
        return self._client.pull(
            subscription=subscription,
            max_messages=max_messages,
            return_immediately=True,
            timeout=timeout,
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def tune_direct_runner_pubsub(max_messages: int = 500, idle_sleep_s: float = 0.02) -> None:
    """Makes the DirectRunner's Pub/Sub reads non-blocking and up to max_messages per bundle."""
    from apache_beam.runners.direct import transform_evaluator as te

    evaluator = te._PubSubReadEvaluator
    if "original" not in _STATE:
        _STATE["original"] = evaluator.__dict__["_get_subscriber_client"]
    original = _STATE["original"].__func__

    def _get_subscriber_client(cls: Any, transform: Any) -> Any:
        return _ImmediatePullClient(original(cls, transform), max_messages, idle_sleep_s)

    # Replaces a classmethod on Beam's class: there is no supported hook for this.
    evaluator._get_subscriber_client = classmethod(_get_subscriber_client)  # type: ignore[method-assign,assignment]
