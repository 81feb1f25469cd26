"""``rillet monitor``: a live terminal dashboard of a local job's monitoring snapshot.

The job (DirectRunner, ``--monitor_dir=DIR``) writes ``DIR/snapshot.json`` every
``--monitor_every_s`` and appends its alerts to ``DIR/runs/<run id>/alerts.jsonl``
(pipelines/local_runner/snapshot.py, docs/specs/monitoring.md). This view reads them every
``--refresh`` seconds and redraws in place (rich.live): throughput, latency, backlog, lag,
process, drift per feature, online quality, data-quality rates and the recent alerts. Figures
over their threshold (pipelines/core/alert_thresholds.json) are highlighted.

``frame(...)`` builds one frame from the files (``render`` from a snapshot), so ``--once`` and
the tests print exactly what the live view shows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from pipelines.core.schema import parse_rfc3339
from pipelines.core.thresholds import Thresholds, load_thresholds
from pipelines.local_runner.snapshot import run_dir

__all__ = ["TITLE", "frame", "read_alerts", "read_snapshot", "render", "serving_roles", "watch"]

TITLE = "rillet monitor"
STALE_INTERVALS = 3  # a snapshot older than this many intervals: the job is probably gone
DRIFT_ROWS = 12  # drift rows shown (over-threshold and highest PSI first)
WIDE = 150  # columns from which the panels sit side by side
NONE = "-"


def read_snapshot(directory: Path) -> dict[str, Any] | None:
    """DIR/snapshot.json, or None when there is none (or it cannot be read)."""
    try:
        snapshot = json.loads((directory / "snapshot.json").read_text())
    except (OSError, ValueError):
        return None
    return snapshot if isinstance(snapshot, dict) else None


def read_alerts(directory: Path, n: int) -> list[dict[str, Any]]:
    """The last ``n`` alerts of ``directory``/alerts.jsonl (a run's directory; oldest first);
    lines that are not JSON objects are skipped."""
    if n <= 0:
        return []
    try:
        lines = (directory / "alerts.jsonl").read_text().splitlines()
    except OSError:
        return []
    alerts = []
    for line in lines[-n:]:
        try:
            alert = json.loads(line)
        except ValueError:
            continue
        if isinstance(alert, dict):
            alerts.append(alert)
    return alerts


# -- formatting ----------------------------------------------------------------------------


def _num(value: Any, fmt: str = ",.0f", unit: str = "") -> str:
    if value is None:
        return NONE
    try:
        return f"{float(value):{fmt}}{unit}"
    except (TypeError, ValueError):
        return str(value)


def _seconds(value: Any) -> str:
    if value is None:
        return NONE
    s = float(value)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def _over(value: Any, threshold: float | None, text: str) -> Text:
    """``text`` in bold red when ``value`` is at or above ``threshold``."""
    if value is not None and threshold is not None and float(value) >= threshold:
        return Text(text, style="bold red")
    return Text(text)


def _short_subscription(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _time_of_day(rfc3339: Any) -> str:
    if not isinstance(rfc3339, str):
        return NONE
    try:
        micros = parse_rfc3339(rfc3339)
    except Exception:  # shown as it is
        return rfc3339
    return time.strftime("%H:%M:%S", time.gmtime(micros / 1e6))


def _kv_table(rows: Sequence[tuple[str, str | Text]]) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="dim")
    table.add_column(justify="right")
    for key, value in rows:
        table.add_row(key, value)
    return table


# -- the panels ----------------------------------------------------------------------------


def _header(
    snapshot: dict[str, Any], directory: Path, now_s: float, roles: dict[str, str]
) -> tuple[Text, bool]:
    job = snapshot.get("job") or {}
    interval = float(snapshot.get("interval_s") or 0) or None
    try:
        age = now_s - parse_rfc3339(str(snapshot.get("time"))) / 1e6
    except Exception:
        age = None
    stale = age is not None and interval is not None and age > STALE_INTERVALS * interval
    header = Text(f"{TITLE}", style="bold")
    header.append(f"  {directory}  ")
    header.append(
        f"job pid {job.get('pid', '?')} ({job.get('runner') or '?'}, {job.get('project') or '?'})"
        f"  up {_seconds(snapshot.get('uptime_s'))}"
    )
    header.append(
        f"  snapshot {_time_of_day(snapshot.get('time'))}Z"
        f" ({_seconds(age)} ago, every {_num(interval, 'g', ' s')})"
    )
    if roles:
        named = {role: version for version, role in roles.items()}
        header.append(
            f"\nregistry now: champion {named.get('champion', NONE)}, "
            f"challenger {named.get('challenger', 'none')}"
        )
    if stale:
        header.append(
            f"\nSTALE: the last snapshot is {_seconds(age)} old (over {STALE_INTERVALS} "
            "intervals): job not running?",
            style="bold yellow",
        )
    return header, stale


def _throughput(snapshot: dict[str, Any]) -> Panel:
    t = snapshot.get("throughput") or {}
    c = snapshot.get("counters") or {}
    dead = (
        c.get("dead_letters_published")
        if "dead_letters_published" in c
        else (c.get("transactions_dead_lettered", 0) + c.get("labels_dead_lettered", 0))
    )
    rows = [
        ("events/s", _num(t.get("events_per_s"), ",.1f")),
        ("predictions/s", _num(t.get("predictions_per_s"), ",.1f")),
        ("transactions", _num(c.get("transactions_valid", 0))),
        ("labels", _num(c.get("labels_valid", 0))),
        ("predictions", _num(c.get("predictions_written", 0))),
        ("dead letters", _num(dead)),
        ("alerts raised", _num(snapshot.get("alerts_raised"))),
    ]
    return Panel(_kv_table(rows), title="throughput", border_style="cyan")


def _latency(snapshot: dict[str, Any], thresholds: Thresholds) -> Panel:
    lat = snapshot.get("latency_ms") or {}
    p99_max = thresholds.service_health.latency_p99_ms
    rows: list[tuple[str, str | Text]] = [
        ("p50", _num(lat.get("p50"), ",.0f", " ms")),
        ("p99", _over(lat.get("p99"), p99_max, _num(lat.get("p99"), ",.0f", " ms"))),
        ("max", _num(lat.get("max"), ",.0f", " ms")),
        ("p99 alert at", _num(p99_max, ",.0f", " ms")),
    ]
    return Panel(_kv_table(rows), title="latency (event → prediction)", border_style="cyan")


def _lag(snapshot: dict[str, Any], thresholds: Thresholds) -> Panel:
    h = thresholds.service_health
    lag, fresh = snapshot.get("system_lag_s"), snapshot.get("data_freshness_s")
    rows: list[tuple[str, str | Text]] = [
        ("system lag", _over(lag, h.system_lag_s, _seconds(lag))),
        ("data freshness", _over(fresh, h.data_freshness_s, _seconds(fresh))),
        ("alert at", f"{_seconds(h.system_lag_s)} / {_seconds(h.data_freshness_s)}"),
    ]
    return Panel(_kv_table(rows), title="lag / freshness", border_style="cyan")


def _process(snapshot: dict[str, Any]) -> Panel:
    p = snapshot.get("process") or {}
    rows = [
        ("CPU", _num(p.get("cpu_percent"), ",.0f", " %")),
        ("memory (RSS)", _num(p.get("rss_mb"), ",.0f", " MB")),
    ]
    return Panel(_kv_table(rows), title="job process", border_style="cyan")


def _backlog(snapshot: dict[str, Any], thresholds: Thresholds) -> Panel:
    table = Table(expand=True, box=None, header_style="bold")
    table.add_column("subscription")
    table.add_column("oldest unacked", justify="right")
    table.add_column("pulled", justify="right")
    table.add_column("undelivered", justify="right")
    limit = thresholds.service_health.oldest_unacked_age_s
    for sub, b in sorted((snapshot.get("backlog") or {}).items()):
        age = b.get("oldest_unacked_age_s")
        undelivered = b.get("undelivered")
        table.add_row(
            _short_subscription(sub),
            _over(age, limit, _seconds(age)),
            _num(b.get("pulled")),
            "n/a locally" if undelivered is None else _num(undelivered),
        )
    if not snapshot.get("backlog"):
        table.add_row("(nothing pulled yet)", NONE, NONE, NONE)
    return Panel(table, title="backlog (input subscriptions)", border_style="cyan")


def _drift(snapshot: dict[str, Any], thresholds: Thresholds) -> Panel:
    rows = []
    # By role (champion, challenger: the role the version served in); the version is in the
    # alerts (docs/specs/monitoring.md).
    for role, features in (snapshot.get("drift") or {}).items():
        for feature, d in features.items():
            t = thresholds.drift.for_feature(feature)
            psi = d.get("psi")
            over = psi is not None and t.enabled and psi >= t.threshold
            rows.append((not over, -(psi or 0.0), role, feature, d, t, over))
    rows.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
    table = Table(expand=True, box=None, header_style="bold")
    for name, justify in (
        ("model", "left"),
        ("feature", "left"),
        ("PSI", "right"),
        ("threshold", "right"),
        ("n", "right"),
        ("window end", "right"),
        ("streak", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for _, _, role, feature, d, t, over in rows[:DRIFT_ROWS]:
        style = "bold red" if over else ("dim" if not t.enabled else "")
        table.add_row(
            role,
            feature,
            _num(d.get("psi"), ".3f"),
            f"{t.threshold:g}" + ("" if t.enabled else " (off)"),
            _num(d.get("n")),
            str(d.get("window_end") or NONE),
            f"{_num(d.get('streak'))}/{t.consecutive}",
            style=style,
        )
    if len(rows) > DRIFT_ROWS:
        hidden = rows[DRIFT_ROWS:]
        over_hidden = sum(1 for r in hidden if r[6])
        table.add_row(
            f"… {len(hidden)} more",
            f"({over_hidden} over threshold)" if over_hidden else "(under threshold)",
            style="dim",
        )
    if not rows:
        table.add_row("(no drift window closed yet)", "", "", "", "", "", "", style="dim")
    over_count = sum(1 for r in rows if r[6])
    title = "drift (PSI per feature" + (f", {over_count} over threshold)" if rows else ")")
    return Panel(table, title=title, border_style="red" if over_count else "cyan")


def _online(snapshot: dict[str, Any]) -> Panel:
    table = Table(expand=True, box=None, header_style="bold")
    for name, justify in (
        ("model", "left"),
        ("day", "left"),
        ("AUC", "right"),
        ("AP", "right"),
        ("CP@100", "right"),
        ("n", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    online = snapshot.get("online_quality") or {}
    for role, q in sorted(online.items()):
        table.add_row(
            role,
            str(q.get("day") or NONE),
            _num(q.get("auc"), ".3f"),
            _num(q.get("ap"), ".3f"),
            _num(q.get("cp100"), ".3f"),
            _num(q.get("n")),
        )
    if not online:
        table.add_row("(no labelled day complete yet)", "", "", "", "", "", style="dim")
    return Panel(table, title="online quality (latest complete day)", border_style="cyan")


def _quality(snapshot: dict[str, Any], thresholds: Thresholds) -> Panel:
    table = Table(expand=True, box=None, header_style="bold")
    table.add_column("rate")
    table.add_column("value", justify="right")
    table.add_column("alert at", justify="right")
    rates = snapshot.get("quality_rates") or {}
    limits = thresholds.data_quality.rates
    # The judge leaves a window of fewer than min_events events unjudged (and a rate without a
    # denominator keeps an older window's gauge): such a figure is no verdict, so none is shown.
    events = snapshot.get("quality_events")
    minimum = thresholds.data_quality.min_events
    unjudged = events is not None and events < minimum
    for name in sorted(set(rates) | set(limits)):
        value = rates.get(name)
        shown: str | Text = (
            Text(f"n={_num(events)} < {minimum:,}, not judged", style="dim")
            if unjudged
            else _over(value, limits.get(name), _num(value, ".2%"))
        )
        table.add_row(name, shown, _num(limits.get(name), ".2%"))
    # Late events past the lateness horizon: stored, but what they changed was not corrected.
    counters = snapshot.get("counters") or {}
    beyond = counters.get("corrections_beyond_horizon")
    table.add_row("late beyond the correction horizon (total)", _num(beyond, ",.0f"), "")
    title = "data quality (last window" + (
        f", {_num(events)} events)" if events is not None else ")"
    )
    return Panel(table, title=title, border_style="cyan")


def serving_roles(model_dir: Any) -> dict[str, str]:
    """Version -> its role now (champion, challenger) in the registry of the job's
    ``model_dir``; empty when there is none or it cannot be read (the view still works)."""
    if not isinstance(model_dir, str) or not model_dir:
        return {}
    if not model_dir.startswith("gs://") and not Path(model_dir).is_dir():
        return {}
    try:
        from pipelines.stores.model_registry import ModelRegistry

        pointer = ModelRegistry(model_dir).pointer()
    except Exception:  # a view of the registry, never a reason to stop the dashboard
        return {}
    roles = {pointer.champion: "champion", pointer.challenger: "challenger"}
    return {version: role for version, role in roles.items() if version}


def _alerts(alerts: Sequence[dict[str, Any]], n: int, roles: dict[str, str]) -> Panel:
    table = Table(expand=True, box=None, header_style="bold")
    versions = [str(a.get("model_version")) for a in alerts if a.get("model_version")]
    for name in ("raised", "severity", "kind", "metric", "version", "role", "feature", "value"):
        # Version ids in full (they differ in their last digits): the column is never cut.
        table.add_column(
            name,
            justify="right" if name == "value" else "left",
            no_wrap=name == "version",
            min_width=max(map(len, versions), default=None) if name == "version" else None,
        )
    table.add_column("streak", justify="right")
    for alert in reversed(alerts):  # the newest first
        severity = str(alert.get("severity") or NONE)
        comparison = alert.get("comparison") or ">="
        value = (
            f"{_num(alert.get('value'), '.4g')} {comparison} {_num(alert.get('threshold'), 'g')}"
        )
        table.add_row(
            _time_of_day(alert.get("raised_at")),
            Text(severity, style="bold red" if severity == "critical" else "yellow"),
            str(alert.get("kind") or NONE),
            str(alert.get("metric") or NONE),
            str(alert.get("model_version") or NONE),
            roles.get(str(alert.get("model_version")), NONE if alert.get("model_version") else ""),
            str(alert.get("feature") or NONE),
            value,
            _num(alert.get("consecutive")),
        )
    if not alerts:
        table.add_row("(no alert)", "", "", "", "", "", "", "", "", style="dim")
    return Panel(
        table,
        title=f"recent alerts (last {n}, newest first; role: the version's role now)",
        border_style="cyan",
    )


def render(
    snapshot: dict[str, Any] | None,
    alerts: Sequence[dict[str, Any]] = (),
    *,
    directory: Path,
    thresholds: Thresholds | None = None,
    now_s: float | None = None,
    alerts_n: int = 10,
    width: int = 200,
) -> RenderableType:
    """One frame of the dashboard for ``snapshot`` (None: the waiting message), laid out for a
    terminal ``width`` columns wide (narrower than WIDE: the panels two by two, then stacked)."""
    now_s = time.time() if now_s is None else now_s
    if snapshot is None:
        return Group(
            Text(f"{TITLE}  {directory}", style="bold"),
            Text(
                f"waiting for a job writing {directory / 'snapshot.json'} — start one with "
                "`rillet run` or `make demo`",
                style="yellow",
            ),
        )
    thresholds = thresholds or load_thresholds()
    roles = serving_roles((snapshot.get("job") or {}).get("model_dir"))
    header, _ = _header(snapshot, directory, now_s, roles)
    figures = [
        _throughput(snapshot),
        _latency(snapshot, thresholds),
        _lag(snapshot, thresholds),
        _process(snapshot),
    ]
    pairs = [
        (_backlog(snapshot, thresholds), _quality(snapshot, thresholds)),
        (_drift(snapshot, thresholds), _online(snapshot)),
    ]
    wide = width >= WIDE
    rows: list[RenderableType] = [header]
    for chunk in [figures] if wide else [figures[:2], figures[2:]]:
        grid = Table.grid(expand=True, padding=(0, 1))
        for _ in chunk:
            grid.add_column(ratio=1)
        grid.add_row(*chunk)
        rows.append(grid)
    for left, right in pairs:
        if wide:
            grid = Table.grid(expand=True, padding=(0, 1))
            grid.add_column(ratio=3)
            grid.add_column(ratio=2)
            grid.add_row(left, right)
            rows.append(grid)
        else:
            rows += [left, right]
    rows.append(_alerts(alerts, alerts_n, roles))
    return Group(*rows)


def frame(
    directory: Path,
    *,
    alerts_n: int = 10,
    thresholds: Thresholds | None = None,
    now_s: float | None = None,
    width: int = 200,
) -> RenderableType:
    """The frame for what ``directory`` holds now: the latest snapshot and its run's alerts."""
    snapshot = read_snapshot(directory)
    run_id = (snapshot or {}).get("run_id")
    return render(
        snapshot,
        read_alerts(run_dir(directory, str(run_id)) if run_id else directory, alerts_n),
        directory=directory,
        thresholds=thresholds,
        now_s=now_s,
        alerts_n=alerts_n,
        width=width,
    )


def watch(
    directory: Path,
    *,
    refresh_s: float = 2.0,
    alerts_n: int = 10,
    thresholds: Thresholds | None = None,
    once: bool = False,
    console: Console | None = None,
) -> None:
    """Prints one frame (``once``) or redraws it in place every ``refresh_s`` until Ctrl-C."""
    console = console or Console()
    limits = thresholds or load_thresholds()

    def current() -> RenderableType:  # the terminal may have been resized
        return frame(directory, alerts_n=alerts_n, thresholds=limits, width=console.width)

    if once:
        console.print(current())
        return
    try:
        with Live(current(), console=console, auto_refresh=False, vertical_overflow="crop") as live:
            while True:
                time.sleep(refresh_s)
                live.update(current(), refresh=True)
    except KeyboardInterrupt:
        pass
