"""``rillet report``: an HTML report of a local run from its monitoring history.

A job run with ``--monitor_dir=DIR`` is a run with its own id (one job process,
pipelines/local_runner/snapshot.py): it appends a snapshot to ``DIR/runs/<run id>/history.jsonl``
every ``--monitor_every_s`` and every alert to ``DIR/runs/<run id>/alerts.jsonl``
(docs/specs/monitoring.md). The report plots one run over time: throughput, latency p50/p99, lag
and freshness, drift PSI per feature (with the threshold), data-quality rates (with their
thresholds), CPU and memory. Every alert is a vertical line on each time axis (red: critical,
orange: warning) and a row of the alerts table.

``pick_run(monitor_dir, run)`` names the run (the latest by default), ``runs_table`` lists them,
``write_run_report(run_directory, out_dir)`` writes ``out_dir/index.html`` and the PNGs beside it
(relative links: the directory can be copied as is; by default ``DIR/runs/<run id>/report``, so a
report never replaces another run's). Text is escaped. matplotlib is imported lazily with the Agg
backend.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.report import write_page
from pipelines.core.schema import parse_rfc3339
from pipelines.core.thresholds import Thresholds, load_thresholds
from pipelines.local_runner.snapshot import HISTORY_FILE, run_dir, run_ids

__all__ = [
    "NoHistory",
    "UnknownRun",
    "pick_run",
    "read_history",
    "runs_lines",
    "runs_table",
    "write_run_report",
]

_SEVERITY_COLORS = {"critical": "#d62728", "warning": "#ff7f0e"}


class NoHistory(ValueError):
    """The monitor directory (or a run of it) holds no snapshot history."""


class UnknownRun(ValueError):
    """A run id that names no run of the monitor directory (or several: a prefix of each)."""


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:  # a line cut by a killed job
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def _when(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(parse_rfc3339(str(value)) / 1e6, tz=UTC)
    except Exception:  # a malformed time is skipped
        return None


def _second(value: Any) -> str | None:
    """An RFC 3339 time to the second (the runs table's columns), None when malformed."""
    when = _when(value)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


def read_alerts(directory: Path) -> list[dict[str, Any]]:
    """The alerts the job's snapshot writer recorded from the alerts topic (alerts.jsonl)."""
    return _read_jsonl(directory / "alerts.jsonl")


def read_history(directory: Path) -> list[dict[str, Any]]:
    """The snapshots of a run's history.jsonl (``directory``: the run's) in time order (a
    ``_t`` datetime added); NoHistory when there are none."""
    history = []
    for snap in _read_jsonl(directory / HISTORY_FILE):
        t = _when(snap.get("time"))
        if t is not None:
            history.append({**snap, "_t": t})
    if not history:
        raise NoHistory(f"{directory} holds no monitoring history ({HISTORY_FILE})")
    history.sort(key=lambda s: s["_t"])
    return history


def pick_run(monitor_dir: Path, run: str | None = None) -> str:
    """The id of run ``run`` of ``monitor_dir`` (a whole id or a prefix naming one run; None:
    the latest run). NoHistory when the directory holds no run, UnknownRun for an id that
    names none or several (the message lists them)."""
    runs = run_ids(monitor_dir)
    if not runs:
        raise NoHistory(f"{monitor_dir} holds no run's monitoring history")
    if run is None:
        return runs[-1]
    if run in runs:
        return run
    matching = [r for r in runs if r.startswith(run)]
    if len(matching) == 1:
        return matching[0]
    shown = ", ".join(matching or runs[-5:])
    raise UnknownRun(
        f"--run {run}: "
        + (
            f"names {len(matching)} runs ({shown})"
            if matching
            else f"no such run; the latest: {shown}"
        )
    )


def runs_table(monitor_dir: Path) -> list[dict[str, Any]]:
    """One row per run, oldest first: run id, first and last snapshot time (to the second),
    snapshots, the predictions it wrote (its last snapshot's counters), alerts, and whether it
    has a report."""
    rows = []
    for run in run_ids(monitor_dir):
        directory = run_dir(monitor_dir, run)
        snapshots = [s for s in _read_jsonl(directory / HISTORY_FILE) if _when(s.get("time"))]
        counters = (snapshots[-1].get("counters") or {}) if snapshots else {}
        rows.append(
            {
                "run": run,
                "from": _second(snapshots[0].get("time")) if snapshots else None,
                "to": _second(snapshots[-1].get("time")) if snapshots else None,
                "snapshots": len(snapshots),
                "predictions": counters.get("predictions_written", 0),
                "alerts": len(read_alerts(directory)),
                "report": (directory / "report" / "index.html").exists(),
            }
        )
    return rows


def runs_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """``runs_table``'s rows as aligned text lines, a header first (``rillet report --list``)."""
    lines = [
        f"{'run':<24} {'from':<20} {'to':<20} {'snapshots':>9} {'predictions':>11} "
        f"{'alerts':>6}  report"
    ]
    for row in rows:
        lines.append(
            f"{row['run']:<24} {row['from'] or '-':<20} {row['to'] or '-':<20} "
            f"{row['snapshots']:>9,} {row['predictions']:>11,} {row['alerts']:>6,}  "
            + ("yes" if row["report"] else "-")
        )
    return lines


@dataclass
class _Series:
    times: list[datetime]
    values: list[float | None]


def _series(history: Sequence[dict[str, Any]], *path: str) -> _Series:
    times, values = [], []
    for snap in history:
        value: Any = snap
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        times.append(snap["_t"])
        values.append(None if value is None else float(value))
    return _Series(times, values)


def _has(series: _Series) -> bool:
    return any(v is not None for v in series.values)


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _plot(
    name: str,
    title: str,
    ylabel: str,
    lines: dict[str, _Series],
    out_dir: Path,
    marks: dict[str, Any],
    thresholds: dict[str, float] | None = None,
) -> str:
    """A time-series PNG (``lines``: label -> series; ``thresholds``: label -> y of a dashed
    line), alerts marked; returns its file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.6))
    colors: dict[str, Any] = {}
    for label, s in lines.items():
        points = [(t, v) for t, v in zip(s.times, s.values, strict=True) if v is not None]
        if not points:
            continue
        xs: Any = [p[0] for p in points]  # datetimes: matplotlib's date axis
        (line,) = ax.plot(xs, [p[1] for p in points], label=label, lw=1.4)
        colors[label] = line.get_color()
    for label, y in (thresholds or {}).items():
        base = label.removesuffix(" threshold")
        ax.axhline(y, ls="--", lw=1, color=colors.get(base, "#d62728"), label=label)
    for t, severity in marks["alerts"]:
        ax.axvline(t, color=_SEVERITY_COLORS.get(severity, "#d62728"), lw=0.9, alpha=0.7)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=90)
    plt.close(fig)
    return name


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        f'<tr class="{_esc(c)}">' + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>"
        for row, c in zip(rows, classes, strict=True)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


_CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
tr.critical td { background: #fdd; }
tr.warning td { background: #fff3dd; }
p.absent { color: #777; font-style: italic; }
figure { margin: 0.5em 0; }
img { max-width: 100%; }
"""


def write_run_report(
    run_directory: Path, out_dir: Path | None = None, thresholds: Thresholds | None = None
) -> Path:
    """Writes ``out_dir/index.html`` (and its PNGs; default: ``run_directory/report``) for
    the run whose history and alerts ``run_directory`` holds (``run_dir(monitor_dir,
    run_id)``); returns the page's path. NoHistory when there is no snapshot."""
    history = read_history(run_directory)
    alerts = read_alerts(run_directory)
    out_dir = out_dir or run_directory / "report"
    alerts.sort(key=lambda a: str(a.get("raised_at") or ""))
    thresholds = thresholds or load_thresholds()
    out_dir.mkdir(parents=True, exist_ok=True)

    alert_marks = [(t, a.get("severity")) for a in alerts if (t := _when(a.get("raised_at")))]
    marks = {"alerts": alert_marks}

    figures: list[tuple[str, str]] = []  # (file, caption)
    absent: list[str] = []

    throughput = {
        "events/s": _series(history, "throughput", "events_per_s"),
        "predictions/s": _series(history, "throughput", "predictions_per_s"),
    }
    figures.append(
        (_plot("throughput.png", "Throughput", "per second", throughput, out_dir, marks), "")
    )

    latency = {
        "p50": _series(history, "latency_ms", "p50"),
        "p99": _series(history, "latency_ms", "p99"),
        "max": _series(history, "latency_ms", "max"),
    }
    if any(_has(s) for s in latency.values()):
        p99 = {"p99 threshold": thresholds.service_health.latency_p99_ms}
        figures.append(
            (
                _plot(
                    "latency.png", "Event-to-prediction latency", "ms", latency, out_dir, marks, p99
                ),
                "",
            )
        )
    else:
        absent.append("latency: no percentile in this history (the Monitor stage sets them)")

    lag = {
        "system lag": _series(history, "system_lag_s"),
        "data freshness": _series(history, "data_freshness_s"),
    }
    if any(_has(s) for s in lag.values()):
        figures.append((_plot("lag.png", "Lag and freshness", "s", lag, out_dir, marks), ""))

    # By role (champion, challenger), as the gauges are named (docs/specs/monitoring.md).
    drift_keys = sorted(
        {(r, f) for s in history for r, fs in (s.get("drift") or {}).items() for f in fs}
    )
    drift_features: list[str] = []
    for number, role in enumerate(sorted({r for r, _ in drift_keys}), start=1):
        lines = {f: _series(history, "drift", role, f, "psi") for r, f in drift_keys if r == role}
        drift_features += list(lines)
        figures.append(
            (
                _plot(
                    f"drift_{number}.png",
                    f"Drift of the {role}'s inputs (PSI of the last closed window)",
                    "PSI",
                    lines,
                    out_dir,
                    marks,
                    {"threshold": thresholds.drift.threshold},
                ),
                f"{role}: " + ", ".join(lines),
            )
        )
    if not drift_keys:
        absent.append("drift: no PSI in this history (the Monitor stage sets it)")

    rate_names = sorted({r for s in history for r in (s.get("quality_rates") or {})})
    if rate_names:
        rates = {r: _series(history, "quality_rates", r) for r in rate_names}
        limits = {
            f"{r} threshold": thresholds.data_quality.rates[r]
            for r in rate_names
            if r in thresholds.data_quality.rates
        }
        figures.append(
            (_plot("quality.png", "Data-quality rates", "rate", rates, out_dir, marks, limits), "")
        )
    else:
        absent.append("data quality: no rate in this history (the Monitor stage sets them)")

    process = {
        "CPU %": _series(history, "process", "cpu_percent"),
        "RSS MB": _series(history, "process", "rss_mb"),
    }
    if any(_has(s) for s in process.values()):
        figures.append(
            (
                _plot(
                    "process.png", "Job process (with children)", "% / MB", process, out_dir, marks
                ),
                "",
            )
        )

    first, last = history[0], history[-1]
    counters = last.get("counters") or {}
    by_kind = Counter(str(a.get("kind")) for a in alerts)
    summary = [
        ("from", first.get("time")),
        ("to", last.get("time")),
        ("run", last.get("run_id") or run_directory.name),
        ("job", f"pid {(last.get('job') or {}).get('pid', '?')}"),
        ("snapshots", len(history)),
        ("events in", counters.get("transactions_valid", 0) + counters.get("labels_valid", 0)),
        ("predictions written", counters.get("predictions_written", 0)),
        ("alerts", ", ".join(f"{k}: {n}" for k, n in sorted(by_kind.items())) or "none"),
        ("drift features", ", ".join(sorted(set(drift_features))) or "none"),
    ]
    alert_rows = [
        (
            a.get("raised_at"),
            a.get("severity"),
            a.get("kind"),
            a.get("metric"),
            a.get("model_version"),
            a.get("feature"),
            a.get("value"),
            f"{a.get('comparison') or '>='} {a.get('threshold')}",
            a.get("consecutive"),
            a.get("message"),
        )
        for a in alerts
    ]
    sections = [
        f"<h1>rillet run report: {_esc(last.get('run_id') or run_directory)}</h1>",
        _table(["", ""], summary, [""] * len(summary)),
        "<p>Vertical lines: alerts (red critical, orange warning). Figures are the job's "
        f"monitoring snapshots (docs/specs/monitoring.md), from {_esc(run_directory)}.</p>",
        "<h2>Time series</h2>",
        *(
            f'<figure><img src="{_esc(name)}" alt="{_esc(name)}">'
            + (f"<figcaption>{_esc(caption)}</figcaption>" if caption else "")
            + "</figure>"
            for name, caption in figures
        ),
        *(f'<p class="absent">{_esc(line)}</p>' for line in absent),
        f"<h2>Alerts ({len(alerts)})</h2>",
        _table(
            [
                "raised at",
                "severity",
                "kind",
                "metric",
                "version",
                "feature",
                "value",
                "threshold",
                "consecutive",
                "message",
            ],
            alert_rows,
            [str(a.get("severity") or "") for a in alerts],
        )
        if alerts
        else '<p class="absent">No alert was raised.</p>',
    ]
    return write_page(out_dir, "rillet run report", _CSS, sections)
