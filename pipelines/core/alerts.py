"""Alerts as data: the record published on the ``alerts`` topic (docs/specs/monitoring.md), and
the over-threshold streaks that raise one alert per episode (kept in Beam state as
:class:`StreakRow` rows, a schema'd type: pipelines/transforms/coders.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from pipelines.core.drift import episode

__all__ = ["ALERT_KINDS", "ALERT_SCHEMA_VERSION", "Alert", "StreakRow", "Streaks", "rfc3339"]

ALERT_SCHEMA_VERSION = 1
ALERT_KINDS = ("drift", "data_quality", "online_quality", "service_health")


def rfc3339(epoch_s: float) -> str:
    """``2026-12-02T07:30:00Z`` (UTC, seconds; milliseconds when not whole)."""
    t = dt.datetime.fromtimestamp(epoch_s, tz=dt.UTC)
    text = t.isoformat(timespec="milliseconds" if epoch_s % 1 else "seconds")
    return text.replace("+00:00", "Z")


@dataclass(frozen=True)
class Alert:
    """One alert; ``message()`` is its Pub/Sub data and attributes."""

    kind: str
    metric: str
    value: float
    threshold: float
    comparison: str  # ">=": a value at or above the threshold alerts; "<": below it
    window_start_s: float
    window_end_s: float
    window_basis: str  # "event_time" or "processing_time"
    severity: str
    message_text: str
    model_version: str | None = None
    feature: str | None = None
    consecutive: int = 1
    raised_at_s: float = field(default=0.0)

    @property
    def alert_id(self) -> str:
        """Stable across redeliveries and re-emissions of the same finding."""
        key = "|".join(
            map(
                str,
                (self.kind, self.metric, self.model_version, self.feature, self.window_end_s),
            )
        )
        return hashlib.sha1(key.encode()).hexdigest()[:20]

    def to_json(self) -> dict[str, Any]:
        """The message data (docs/specs/monitoring.md)."""
        return {
            "schema_version": ALERT_SCHEMA_VERSION,
            "alert_id": self.alert_id,
            "kind": self.kind,
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "comparison": self.comparison,
            "window_start": rfc3339(self.window_start_s),
            "window_end": rfc3339(self.window_end_s),
            "window_basis": self.window_basis,
            "consecutive": self.consecutive,
            "severity": self.severity,
            "model_version": self.model_version,
            "feature": self.feature,
            "message": self.message_text,
            "raised_at": rfc3339(self.raised_at_s),
        }

    def message(self) -> tuple[bytes, dict[str, str]]:
        """(data, attributes): the attributes are what a subscription filter can select on."""
        attributes = {
            "kind": self.kind,
            "metric": self.metric,
            "severity": self.severity,
            "model_version": self.model_version or "",
            "feature": self.feature or "",
            "schema_version": str(ALERT_SCHEMA_VERSION),
        }
        return json.dumps(self.to_json(), sort_keys=True).encode(), attributes

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class StreakRow(NamedTuple):
    """One metric's episode: windows in a row over the threshold, windows in a row under it,
    and whether the next streak of ``consecutive`` may alert."""

    metric: str
    streak: int
    under: int
    armed: bool


@dataclass
class Streaks:
    """Consecutive over-threshold windows per metric; ``judge`` says when to alert: when a
    metric's streak reaches ``consecutive``, once per episode (pipelines.core.drift.episode: the
    next alert needs ``consecutive`` windows in a row under the threshold first)."""

    consecutive: int
    state: dict[str, tuple[int, int, bool]] = field(default_factory=dict)

    def judge(self, metric: str, over: bool | None) -> tuple[int, bool]:
        """(streak, alert now). ``over=None`` (not judged: too little data) keeps the streak."""
        streak, under, armed = self.state.get(metric, (0, 0, True))
        if over is None:
            return streak, False
        streak, under, armed, alert = episode(over, streak, under, armed, self.consecutive)
        self.state[metric] = (streak, under, armed)
        return streak, alert

    def rows(self) -> list[StreakRow]:
        """The episodes by metric, sorted (what a state cell keeps)."""
        return [StreakRow(m, *self.state[m]) for m in sorted(self.state)]

    @classmethod
    def from_rows(cls, consecutive: int, rows: Iterable[StreakRow]) -> Streaks:
        """The streaks of ``rows`` (read from state)."""
        return cls(
            consecutive, {r.metric: (int(r.streak), int(r.under), bool(r.armed)) for r in rows}
        )
