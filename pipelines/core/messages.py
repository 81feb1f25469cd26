"""What every stage knows about a Pub/Sub message: a rejected one (DeadLetter) and its publish
time (publish_time_us). Plain Python: the transforms and the local runner share them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DeadLetter", "publish_time_us"]


@dataclass(frozen=True)
class DeadLetter:
    """A rejected message: its original bytes, why, and where it was rejected.

    ``token`` is the group of outputs it belongs to: when they are all published, the messages
    behind them are finished (local_runner.recovery); ``message_id`` is the original message's.
    ``redelivered``: this very message was dead-lettered before (it came again: a replay after a
    restart, a retried work item); published again, since delivery is at least once, but not a
    new rejection for the data-quality rates. ``exact_copy``: a duplicate with the same content
    as the message that counts (a publisher's retry), not an id reused with another payload.
    """

    payload: bytes
    reason: str
    detail: str
    source: str
    stage: str
    attributes: dict[str, str] = field(default_factory=dict)
    message_id: str = ""
    token: int = 0
    redelivered: bool = False
    exact_copy: bool = False


def publish_time_us(message: Any) -> int:
    """A Pub/Sub message's publish time in µs since the epoch (0 when it has none)."""
    publish_time = getattr(message, "publish_time", None)
    if publish_time is None:
        return 0
    if hasattr(publish_time, "timestamp"):
        return int(publish_time.timestamp() * 1_000_000)
    return int(publish_time.seconds * 1_000_000 + publish_time.nanos // 1000)
