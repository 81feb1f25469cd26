"""The alert thresholds: one declared place (alert_thresholds.json beside this module), read by
the job's Monitor stage and by Terraform's alert policies (docs/specs/monitoring.md).

``load_thresholds(path)`` reads the packaged file, or the file given (``--alert_thresholds``),
validates it and returns :class:`Thresholds`; a wrong file raises ``ValueError`` naming the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "DataQualityThresholds",
    "DriftThresholds",
    "HealthThresholds",
    "OnlineQualityThresholds",
    "Thresholds",
    "load_thresholds",
    "packaged_thresholds_path",
    "parse_thresholds",
]

SEVERITIES = ("warning", "critical")
QUALITY_RATES = ("dead_letter_rate", "unknown_label_rate", "duplicate_rate", "late_event_rate")


@dataclass(frozen=True)
class DriftThresholds:
    """Drift of one input (or of the score): PSI of sliding event-time windows."""

    threshold: float = 0.2
    consecutive: int = 3
    severity: str = "warning"
    window_s: int = 3600
    period_s: int = 900
    lateness_s: int = 300
    min_count: int = 200
    enabled: bool = True
    metric: str = "psi"
    features: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_feature(self, name: str) -> DriftThresholds:
        """These thresholds with ``name``'s overrides applied (``why`` is documentation)."""
        override = {k: v for k, v in self.features.get(name, {}).items() if k != "why"}
        return replace(self, features={}, **override)


@dataclass(frozen=True)
class DataQualityThresholds:
    """Rates of bad input per processing-time window."""

    window_s: int = 60
    min_events: int = 200
    severity: str = "warning"
    rates: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OnlineQualityThresholds:
    """The champion's online figures against its model card's validation figures."""

    min_fraction_of_validation: dict[str, float] = field(default_factory=dict)
    min_labelled: int = 1000
    min_frauds: int = 10
    severity: str = "critical"


@dataclass(frozen=True)
class HealthThresholds:
    """Latency, lag and backlog: over the threshold for ``consecutive`` windows alerts."""

    window_s: int = 60
    consecutive: int = 3
    severity: str = "warning"
    latency_p99_ms: float = 5000.0
    system_lag_s: float = 60.0
    data_freshness_s: float = 300.0
    oldest_unacked_age_s: float = 300.0
    dead_letter_per_s: float = 1.0


@dataclass(frozen=True)
class Thresholds:
    """Every threshold of the monitoring, by section."""

    drift: DriftThresholds
    data_quality: DataQualityThresholds
    online_quality: OnlineQualityThresholds
    service_health: HealthThresholds


def packaged_thresholds_path() -> Path:
    """The packaged alert_thresholds.json."""
    return Path(str(resources.files("pipelines.core").joinpath("alert_thresholds.json")))


def _section(cls: Any, raw: dict[str, Any], name: str) -> Any:
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"alert thresholds: unknown key(s) {', '.join(unknown)} in '{name}'")
    section = cls(**raw)
    severity = getattr(section, "severity", "warning")
    if severity not in SEVERITIES:
        raise ValueError(
            f"alert thresholds: '{name}.severity' is {severity!r}; expected one of "
            f"{', '.join(SEVERITIES)}"
        )
    return section


def load_thresholds(path: str | Path | None = None) -> Thresholds:
    """The thresholds in the local file ``path`` (default: the packaged file); ValueError if
    malformed. (RilletOptions.thresholds() also reads gs:// paths.)"""
    source = Path(path) if path else packaged_thresholds_path()
    try:
        text = source.read_text()
    except OSError as exc:
        raise ValueError(f"alert thresholds {source}: {exc}") from exc
    return parse_thresholds(text, str(source))


def parse_thresholds(text: str, source: str = "alert thresholds") -> Thresholds:
    """The thresholds of a thresholds file's text; ValueError naming what is wrong."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"alert thresholds {source}: {exc}") from exc
    raw.pop("schema_version", None)
    missing = {"drift", "data_quality", "online_quality", "service_health"} - set(raw)
    if missing:
        raise ValueError(f"alert thresholds {source}: missing section(s) {sorted(missing)}")
    drift = _section(DriftThresholds, raw["drift"], "drift")
    for feature, override in drift.features.items():
        bad = sorted(set(override) - set(DriftThresholds.__dataclass_fields__) - {"why"})
        if bad:
            raise ValueError(
                f"alert thresholds: unknown key(s) {bad} in 'drift.features.{feature}'"
            )
        d = drift.for_feature(feature)
        if d.enabled and (d.window_s <= 0 or d.period_s <= 0 or d.window_s % d.period_s):
            raise ValueError(
                f"alert thresholds: drift of {feature}: window_s must be a positive multiple of "
                "period_s"
            )
    if drift.window_s <= 0 or drift.period_s <= 0 or drift.window_s % drift.period_s:
        raise ValueError("alert thresholds: drift.window_s must be a positive multiple of period_s")
    if drift.consecutive < 1:
        raise ValueError("alert thresholds: drift.consecutive must be at least 1")
    quality = _section(DataQualityThresholds, raw["data_quality"], "data_quality")
    unknown_rates = sorted(set(quality.rates) - set(QUALITY_RATES))
    if unknown_rates:
        raise ValueError(
            f"alert thresholds: unknown rate(s) {unknown_rates}; known: {', '.join(QUALITY_RATES)}"
        )
    online = _section(OnlineQualityThresholds, raw["online_quality"], "online_quality")
    bad_metrics = sorted(set(online.min_fraction_of_validation) - {"ap", "cp100", "auc"})
    if bad_metrics:
        raise ValueError(
            f"alert thresholds: online_quality metrics {bad_metrics}: use ap, cp100, auc"
        )
    health = _section(HealthThresholds, raw["service_health"], "service_health")
    return Thresholds(drift, quality, online, health)
