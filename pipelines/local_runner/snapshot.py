"""The local monitoring snapshot (DirectRunner, ``--monitor_dir``): docs/specs/monitoring.md.

``SnapshotWriter(result, options)`` is a daemon thread in the job's process. Every
``--monitor_every_s`` it reads the job's Beam metrics (in-process on the DirectRunner), the
Pub/Sub pull figures (local_runner.pubsub_pull) and this process's CPU and memory, and writes

- ``DIR/snapshot.json``: the latest snapshot, replaced atomically (written beside, renamed);
- ``DIR/runs/<run id>/history.jsonl``: the same object appended as one line;
- ``DIR/runs/<run id>/alerts.jsonl``: every alert on the alerts topic (its JSON data, one per
  line, deduplicated on ``alert_id``), from a subscription the writer creates
  (``<topic>-snapshot-<pid>``) and deletes when it stops.

A run is one job process: its id is its start time and pid (``20261207T210312Z-4242``: ids sort
by start), in every snapshot (``run_id``), so each run's history and report are its own.

``rillet monitor`` and ``rillet report`` (pipelines/app) read these files. The shape is built by
``build_snapshot`` (a pure function, so the tests build it from fake metrics). A failure is
logged and the next interval tries again: monitoring never stops the job.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.core.alerts import rfc3339
from pipelines.local_runner.pubsub_pull import SubscriptionPulls, pull_stats

__all__ = [
    "EVAL_NAMESPACE",
    "METRICS_NAMESPACE",
    "MONITOR_NAMESPACE",
    "MetricValues",
    "SnapshotWriter",
    "build_snapshot",
    "metric_values",
    "new_run_id",
    "run_dir",
    "run_ids",
]

_LOGGER = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# The namespaces of docs/specs/monitoring.md. The first two are also constants of
# pipelines.transforms (parse.METRICS_NAMESPACE, online_eval.EVAL_NAMESPACE), which this layer
# may not import; tests/unit/test_snapshot.py checks they agree.
METRICS_NAMESPACE = "rillet"
EVAL_NAMESPACE = "rillet_online_eval"
MONITOR_NAMESPACE = "rillet_monitor"

RUNS_DIR = "runs"  # DIR/runs/<run id>/: one job process's history and alerts
HISTORY_FILE = "history.jsonl"

EVENT_COUNTERS = ("transactions_valid", "labels_valid")
PREDICTION_COUNTER = "predictions_written"


def new_run_id(started_s: float, pid: int) -> str:
    """The id of the run a process started at ``started_s`` is (see the module docstring)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started_s)) + f"-{pid}"


def run_dir(monitor_dir: Path, run_id: str) -> Path:
    """Where run ``run_id`` of ``monitor_dir`` keeps its history and alerts."""
    return monitor_dir / RUNS_DIR / run_id


def run_ids(monitor_dir: Path) -> list[str]:
    """The runs of ``monitor_dir`` that wrote a history, oldest first."""
    runs = monitor_dir / RUNS_DIR
    if not runs.is_dir():
        return []
    return sorted(p.name for p in runs.iterdir() if (p / HISTORY_FILE).is_file())


@dataclass
class MetricValues:
    """A job's metrics by (namespace, name): counters summed over steps, gauges (the latest
    value over steps), distributions (count, sum, min, max summed/combined over steps)."""

    counters: dict[tuple[str, str], int] = field(default_factory=dict)
    gauges: dict[tuple[str, str], int] = field(default_factory=dict)
    distributions: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)

    def namespace(self, kind: str, namespace: str) -> dict[str, Any]:
        """``kind`` ("counters", "gauges", "distributions") of one namespace, by name."""
        table: dict[tuple[str, str], Any] = getattr(self, kind)
        return {name: v for (ns, name), v in table.items() if ns == namespace}


def _value(result: Any) -> Any:
    committed = getattr(result, "committed", None)
    return committed if committed is not None else getattr(result, "attempted", None)


def metric_values(query: Mapping[str, Iterable[Any]]) -> MetricValues:
    """MetricValues from ``result.metrics().query()``'s answer (committed values, the attempted
    ones where a runner commits none)."""
    out = MetricValues()
    gauge_times: dict[tuple[str, str], float] = {}
    for m in query.get("counters", ()):
        value = _value(m)
        if value is None:
            continue
        key = (m.key.metric.namespace, m.key.metric.name)
        out.counters[key] = out.counters.get(key, 0) + int(value)
    for m in query.get("gauges", ()):
        value = _value(m)
        if value is None or getattr(value, "value", None) is None:
            continue
        key = (m.key.metric.namespace, m.key.metric.name)
        stamp = getattr(value, "timestamp", 0) or 0
        if key not in out.gauges or stamp >= gauge_times[key]:
            out.gauges[key] = int(value.value)
            gauge_times[key] = stamp
    for m in query.get("distributions", ()):
        value = _value(m)
        if value is None or not getattr(value, "count", 0):
            continue
        key = (m.key.metric.namespace, m.key.metric.name)
        d = out.distributions.get(key)
        if d is None:
            out.distributions[key] = {
                "count": value.count,
                "sum": value.sum,
                "min": value.min,
                "max": value.max,
            }
        else:
            d["count"] += value.count
            d["sum"] += value.sum
            d["min"] = min(d["min"], value.min)
            d["max"] = max(d["max"], value.max)
    return out


@dataclass(frozen=True)
class Sample:
    """What the throughput of the next snapshot is computed from."""

    at_s: float
    events: int
    predictions: int


def _split(name: str, prefix: str, parts: int) -> list[str] | None:
    """``prefix/a/b`` -> [a, b] when ``name`` has that prefix and ``parts`` parts after it (the
    last part may hold slashes)."""
    if not name.startswith(prefix + "/"):
        return None
    rest = name[len(prefix) + 1 :].split("/", parts - 1)
    return rest if len(rest) == parts and all(rest) else None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def build_snapshot(
    values: MetricValues,
    *,
    now_s: float,
    started_s: float,
    interval_s: float,
    previous: Sample,
    pulls: Mapping[str, SubscriptionPulls],
    input_subscriptions: Iterable[str] = (),
    process: Mapping[str, float | None] | None = None,
    job: Mapping[str, Any] | None = None,
    run_id: str | None = None,
) -> tuple[dict[str, Any], Sample]:
    """The snapshot (docs/specs/monitoring.md) and the sample the next one's throughput starts
    from. Figures not known yet are None."""
    counters = values.namespace("counters", METRICS_NAMESPACE)
    monitor = values.namespace("gauges", MONITOR_NAMESPACE)
    monitor_counters = values.namespace("counters", MONITOR_NAMESPACE)
    evaluation = values.namespace("gauges", EVAL_NAMESPACE)

    events = sum(counters.get(name, 0) for name in EVENT_COUNTERS)
    predictions = counters.get(PREDICTION_COUNTER, 0)
    sample = Sample(now_s, events, predictions)
    elapsed = now_s - previous.at_s
    throughput: dict[str, float | None] = {"events_per_s": None, "predictions_per_s": None}
    if elapsed > 0:
        throughput["events_per_s"] = _round((events - previous.events) / elapsed, 2)
        throughput["predictions_per_s"] = _round((predictions - previous.predictions) / elapsed, 2)
    # The counters' deltas are this interval's; the Monitor stage's gauges are those of its
    # last processing-time window (kept while no window fires): used only without counters.
    for name in ("events_per_s", "predictions_per_s"):
        if name in monitor and not counters:
            throughput[name] = float(monitor[name])

    latency = {key: monitor.get(f"latency_{key}_ms") for key in ("p50", "p99", "max")}

    subscriptions = list(dict.fromkeys([*input_subscriptions, *pulls]))
    backlog: dict[str, dict[str, Any]] = {}
    ages: list[float] = []
    newest: list[float] = []
    for sub in subscriptions:
        p = pulls.get(sub, SubscriptionPulls())
        age = p.backlog_age_s()
        if age is not None:
            ages.append(age)
        if p.newest_publish_s is not None:
            newest.append(p.newest_publish_s)
        backlog[sub] = {
            "oldest_unacked_age_s": _round(age),
            "pulled": p.pulled,
            "undelivered": None,  # the emulator has no metrics API
        }

    drift: dict[str, dict[str, dict[str, Any]]] = {}
    for name, value in monitor.items():
        for key, scale in (
            ("drift_psi_milli", 1000),
            ("drift_n", 1),
            ("drift_window_end_s", 1),
            ("drift_streak", 1),
        ):
            parts = _split(name, key, 2)
            if parts is None:
                continue
            row = drift.setdefault(parts[0], {}).setdefault(
                parts[1], {"psi": None, "n": None, "window_end": None, "streak": None}
            )
            if key == "drift_psi_milli":
                row["psi"] = value / scale
            elif key == "drift_n":
                row["n"] = value
            elif key == "drift_window_end_s":
                row["window_end"] = rfc3339(value) if value > 0 else None
            else:
                row["streak"] = value

    # The online evaluation's gauges: the latest complete day of each role.
    online: dict[str, dict[str, Any]] = {}
    for name, value in evaluation.items():
        for key in ("auc_ppm", "ap_ppm", "cp100_ppm", "n", "day_start_s"):
            parts = _split(name, key, 1)
            if parts is None:
                continue
            row = online.setdefault(
                parts[0], {"day": None, "auc": None, "ap": None, "cp100": None, "n": None}
            )
            if key == "n":
                row["n"] = value
            elif key == "day_start_s":
                row["day"] = rfc3339(value)[:10]
            else:
                row[key.removesuffix("_ppm")] = value / 1_000_000
    online = dict(sorted(online.items()))

    rates = {}
    for name, value in monitor.items():
        parts = _split(name, "quality_rate_ppm", 1)
        if parts is not None:
            rates[parts[0]] = value / 1_000_000

    snapshot = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "time": rfc3339(now_s),
        "uptime_s": _round(now_s - started_s, 1),
        "interval_s": interval_s,
        "job": dict(job or {}),
        "counters": dict(sorted(counters.items())),
        "throughput": throughput,
        "latency_ms": latency,
        "backlog": backlog,
        "system_lag_s": _round(max(ages)) if ages else None,
        "data_freshness_s": _round(max(0.0, now_s - max(newest))) if newest else None,
        "process": dict(process or {"cpu_percent": None, "rss_mb": None}),
        "drift": {v: dict(sorted(f.items())) for v, f in sorted(drift.items())},
        "online_quality": online,
        "quality_rates": dict(sorted(rates.items())),
        "quality_events": monitor.get("quality_events"),
        "alerts_raised": monitor_counters.get("alerts_raised"),
    }
    return snapshot, sample


class ProcessUsage:
    """CPU (percent of one core, since the previous call) and resident memory of this process
    and its children."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._me = psutil.Process()
        self._known: dict[int, Any] = {}
        self.read()  # the first cpu_percent call only starts the measure

    def read(self) -> dict[str, float | None]:
        psutil = self._psutil
        procs = [self._me]
        try:
            children = self._me.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:  # the same Process object, so cpu_percent has a previous call
            procs.append(self._known.setdefault(child.pid, child))
        alive = {p.pid for p in procs}
        self._known = {pid: p for pid, p in self._known.items() if pid in alive}
        cpu, rss = 0.0, 0
        for proc in procs:
            try:
                cpu += proc.cpu_percent(interval=None)
                rss += proc.memory_info().rss
            except psutil.Error:
                continue
        return {"cpu_percent": round(cpu, 1), "rss_mb": round(rss / 2**20, 1)}


def _path(project: str, kind: str, name: str) -> str:
    """pipelines.options.resource_path (this layer may not import options)."""
    return name if name.startswith("projects/") else f"projects/{project}/{kind}/{name}"


class AlertsFollower:
    """Appends the alerts topic's messages to ``alerts.jsonl`` (deduplicated on alert_id) from
    a subscription of its own, created on start and deleted on ``close``."""

    def __init__(self, topic: str, path: Path, subscription: str) -> None:
        from google.cloud import pubsub_v1

        self.topic = topic
        self.path = path
        self.subscription = subscription
        self.seen: set[str] = set()
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    self.seen.add(str(json.loads(line).get("alert_id")))
                except (ValueError, AttributeError):
                    continue
        self._client: Any = pubsub_v1.SubscriberClient()
        self._remove_stale()
        self._client.create_subscription(
            request={"name": subscription, "topic": topic, "ack_deadline_seconds": 60}
        )

    def _remove_stale(self) -> None:
        """Deletes this topic's snapshot subscriptions whose process is gone (a job killed
        before it could delete its own)."""
        import psutil
        from google.cloud import pubsub_v1

        stem = re.escape(self.topic.rsplit("/", 1)[-1])
        pattern = re.compile(rf"/subscriptions/{stem}-snapshot-(\d+)$")
        publisher = pubsub_v1.PublisherClient()
        try:
            names = list(publisher.list_topic_subscriptions(request={"topic": self.topic}))
        except Exception:  # a listing failure only leaves stale subscriptions
            return
        for name in names:
            match = pattern.search(name)
            if match and not psutil.pid_exists(int(match.group(1))):
                with contextlib.suppress(Exception):
                    self._client.delete_subscription(request={"subscription": name})

    def poll(self) -> int:
        """Pulls what is there now; returns the number of new alerts appended."""
        new = 0
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # return_immediately
                response = self._client.pull(
                    subscription=self.subscription, max_messages=500, return_immediately=True
                )
            if not response.received_messages:
                return new
            lines = []
            for rm in response.received_messages:
                try:
                    alert = json.loads(rm.message.data)
                except ValueError:
                    _LOGGER.warning("alerts topic: a message that is not JSON, skipped")
                    continue
                alert_id = str(alert.get("alert_id")) if isinstance(alert, dict) else None
                if alert_id is None or alert_id in self.seen:
                    continue
                self.seen.add(alert_id)
                lines.append(json.dumps(alert, sort_keys=True) + "\n")
            if lines:
                with open(self.path, "a") as fh:
                    fh.writelines(lines)
                new += len(lines)
            self._client.acknowledge(
                subscription=self.subscription,
                ack_ids=[rm.ack_id for rm in response.received_messages],
            )

    def close(self) -> None:
        try:
            self._client.delete_subscription(request={"subscription": self.subscription})
        finally:
            self._client.close()


def _options(options: Any) -> dict[str, Any]:
    """The options as a dict (a PipelineOptions, or a dict already)."""
    if isinstance(options, Mapping):
        return dict(options)
    return dict(options.get_all_options(retain_unknown_options=False))


class SnapshotWriter(threading.Thread):
    """Writes the snapshot every ``--monitor_every_s`` into ``--monitor_dir`` (see the module)."""

    def __init__(self, result: Any, options: Any, *, follow_alerts: bool = True) -> None:
        super().__init__(name="rillet-snapshot", daemon=True)
        opts = _options(options)
        self.result = result
        self.directory = Path(opts["monitor_dir"])
        self.interval_s = float(opts.get("monitor_every_s") or 10.0)
        project = opts.get("project") or ""
        self.inputs = [
            _path(project, "subscriptions", opts[key])
            for key in ("transactions_subscription", "labels_subscription")
            if opts.get(key)
        ]
        self.alerts_topic = (
            _path(project, "topics", opts["alerts_topic"]) if opts.get("alerts_topic") else ""
        )
        self.job = {
            "pid": os.getpid(),
            "runner": opts.get("runner") or "DirectRunner",
            "project": project,
            "model_dir": opts.get("model_dir"),
        }
        self.follow_alerts = follow_alerts
        self.started_s = time.time()
        self.run_id = new_run_id(self.started_s, os.getpid())
        self.run_directory = run_dir(self.directory, self.run_id)
        self._previous = Sample(self.started_s, 0, 0)
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._usage: ProcessUsage | None = None
        self._alerts: AlertsFollower | None = None
        self._failures = 0
        self._closed = False

    @property
    def snapshot_path(self) -> Path:
        return self.directory / "snapshot.json"

    def start(self) -> None:
        self.run_directory.mkdir(parents=True, exist_ok=True)
        try:
            self._usage = ProcessUsage()
        except Exception as exc:  # no CPU figures, the rest still works
            _LOGGER.warning("monitor snapshot: no process figures (%s)", exc)
        if self.follow_alerts and self.alerts_topic:
            name = _path(
                self.alerts_topic.split("/")[1],
                "subscriptions",
                f"{self.alerts_topic.rsplit('/', 1)[-1]}-snapshot-{os.getpid()}",
            )
            try:
                self._alerts = AlertsFollower(
                    self.alerts_topic, self.run_directory / "alerts.jsonl", name
                )
            except Exception as exc:  # e.g. no alerts topic on this stack
                _LOGGER.warning(
                    "monitor snapshot: not following alerts on %s (%s)", self.alerts_topic, exc
                )
        atexit.register(self.stop)
        super().start()
        _LOGGER.info(
            "monitor snapshot: %s every %g s (run %s)",
            self.snapshot_path,
            self.interval_s,
            self.run_id,
        )

    def run(self) -> None:
        self.write_once()
        while not self._stop_event.wait(self.interval_s):
            self.write_once()

    def write_once(self) -> dict[str, Any] | None:
        """One snapshot (and the alerts that arrived); None when it failed (logged)."""
        with self._lock:
            if self._alerts is not None:
                try:
                    self._alerts.poll()
                except Exception as exc:
                    self._log_failure("reading the alerts", exc)
            try:
                snapshot = self._snapshot()
                self._write(snapshot)
            except Exception as exc:  # never crash the job
                self._log_failure("writing the snapshot", exc)
                return None
            self._failures = 0
            return snapshot

    def _log_failure(self, what: str, exc: Exception) -> None:
        self._failures += 1
        # The first failure with its traceback, then one line per failure.
        _LOGGER.warning("monitor snapshot: %s failed: %s", what, exc, exc_info=self._failures == 1)

    def _snapshot(self) -> dict[str, Any]:
        values = metric_values(self.result.metrics().query())
        now = time.time()
        snapshot, self._previous = build_snapshot(
            values,
            now_s=now,
            started_s=self.started_s,
            interval_s=self.interval_s,
            previous=self._previous,
            pulls=pull_stats().snapshot(),
            input_subscriptions=self.inputs,
            process=self._usage.read() if self._usage is not None else None,
            job=self.job,
            run_id=self.run_id,
        )
        return snapshot

    def _write(self, snapshot: dict[str, Any]) -> None:
        text = json.dumps(snapshot, sort_keys=False)
        tmp = self.snapshot_path.with_name("snapshot.json.tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, self.snapshot_path)
        with open(self.run_directory / HISTORY_FILE, "a") as fh:
            fh.write(text + "\n")

    def stop(self) -> None:
        """Stops the thread, writes a last snapshot and deletes the alerts subscription
        (idempotent; also run at exit)."""
        if self._closed:
            return
        self._closed = True
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=10)
        self.write_once()
        if self._alerts is not None:
            try:
                self._alerts.close()
            except Exception as exc:
                _LOGGER.warning("monitor snapshot: deleting %s failed: %s", self._alerts, exc)
            self._alerts = None
