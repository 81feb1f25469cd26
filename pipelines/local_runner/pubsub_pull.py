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
"""

from __future__ import annotations

import time
import warnings
from typing import Any

from pipelines.core.messages import publish_time_us
from pipelines.local_runner.recovery import tracker

__all__ = ["tune_direct_runner_pubsub"]

_STATE: dict[str, Any] = {}


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
            time.sleep(self._idle)
        else:
            # Recorded before Beam acknowledges them: see pipelines.local_runner.recovery.
            tracker().pulled(
                subscription,
                (
                    (rm.message.message_id, publish_time_us(rm.message))
                    for rm in response.received_messages
                ),
            )
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
