"""``rillet monitor`` (pipelines/app/monitor_view.py) rendering given snapshots, ``rillet report``
(pipelines/app/run_report.py) from a small synthetic history, and both commands' errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from pipelines.app.monitor_view import render
from pipelines.core.schema import format_rfc3339

ROOT = Path(__file__).resolve().parents[2]
TX = "projects/rillet-local/subscriptions/transactions-rillet"
NOW = 1_700_000_000.0
END = "2018-09-01T10:00:00Z"


def snapshot(at_s: float = NOW, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema_version": 1,
        "time": format_rfc3339(int(at_s * 1_000_000)),
        "uptime_s": 42.0,
        "interval_s": 5.0,
        "job": {"pid": 4242, "runner": "DirectRunner", "project": "rillet-local"},
        "counters": {
            "transactions_valid": 1000,
            "labels_valid": 200,
            "predictions_written": 990,
            "corrections_beyond_horizon": 37,
        },
        "throughput": {"events_per_s": 410.2, "predictions_per_s": 205.0},
        "latency_ms": {"p50": 250, "p99": 7800, "max": 9000},
        "backlog": {TX: {"oldest_unacked_age_s": 0.4, "pulled": 1000, "undelivered": None}},
        "system_lag_s": 0.8,
        "data_freshness_s": 0.5,
        "process": {"cpu_percent": 150.0, "rss_mb": 1400.0},
        "drift": {
            "champion": {
                "TX_AMOUNT": {"psi": 0.31, "n": 400, "window_end": END, "streak": 3},
                "TERMINAL_ID_RISK_7DAY_WINDOW": {"psi": 0.01, "n": 400, "window_end": None,
                                                 "streak": 0},
            }
        },
        "online_quality": {
            "champion": {"day": "2018-09-01", "auc": 0.9, "ap": 0.7, "cp100": 0.3, "n": 9000}
        },
        "quality_rates": {"dead_letter_rate": 0.02, "duplicate_rate": 0.0},
        "alerts_raised": 1,
    }  # fmt: skip
    return {**base, **over}


ALERT = {
    "schema_version": 1,
    "alert_id": "a1",
    "kind": "drift",
    "metric": "psi",
    "value": 0.31,
    "threshold": 0.25,
    "comparison": ">=",
    "window_start": "2018-09-01T09:00:00Z",
    "window_end": "2018-09-01T10:00:00Z",
    "window_basis": "event_time",
    "consecutive": 3,
    "severity": "warning",
    "model_version": "v1",
    "feature": "TX_AMOUNT",
    "message": "TX_AMOUNT drifted",
    "raised_at": format_rfc3339(int((NOW - 3) * 1_000_000)),
}


def text_of(renderable: Any, width: int = 200) -> str:
    console = Console(record=True, width=width, force_terminal=True, color_system="truecolor")
    console.print(renderable)
    return console.export_text()


def test_a_snapshot_renders_every_panel(tmp_path: Path) -> None:
    out = text_of(render(snapshot(), [ALERT], directory=tmp_path, now_s=NOW + 1))
    for expected in (
        "rillet monitor",
        "job pid 4242",
        "410.2",  # events/s
        "205.0",
        "990",  # predictions
        "7,800 ms",  # p99
        "transactions-rillet",
        "n/a locally",
        "0.8 s",  # system lag
        "1,400 MB",
        "TX_AMOUNT",
        "0.310",
        "3/3",  # streak / consecutive
        "2018-09-01",
        "0.700",  # AP
        "dead_letter_rate",
        "2.00%",
        "psi",
        "0.31 >= 0.25",
        "warning",
        "late beyond the correction horizon",
        "37",
    ):
        assert expected in out, (expected, out)
    assert "STALE" not in out
    assert out.index("TX_AMOUNT") < out.index("TERMINAL_ID_RISK_7DAY_WINDOW")  # over first


def test_over_threshold_figures_are_highlighted(tmp_path: Path) -> None:
    console = Console(record=True, width=200, force_terminal=True, color_system="truecolor")
    console.print(render(snapshot(), [], directory=tmp_path, now_s=NOW))
    styled = console.export_text(styles=True)
    # bold red (ANSI 1;31) around the drifting feature's row and the p99 over 5000 ms
    assert "\x1b[1;31mchampion" in styled or "\x1b[1;31m champion" in styled
    assert "\x1b[1;31m7,800 ms" in styled


def test_waiting_and_stale(tmp_path: Path) -> None:
    out = text_of(render(None, directory=tmp_path))
    assert "waiting for a job writing" in out and "rillet run" in out and "make demo" in out
    stale = text_of(render(snapshot(at_s=NOW - 60), directory=tmp_path, now_s=NOW))
    assert "STALE" in stale and "job not running?" in stale


def test_a_bare_snapshot_renders(tmp_path: Path) -> None:
    bare = snapshot(
        latency_ms={"p50": None, "p99": None, "max": None},
        drift={},
        online_quality={},
        quality_rates={},
        alerts_raised=None,
        backlog={},
        system_lag_s=None,
        data_freshness_s=None,
    )
    out = text_of(render(bare, [], directory=tmp_path, now_s=NOW))
    assert "no drift window closed yet" in out and "(no alert)" in out
    assert "no labelled day complete yet" in out


RUN = "20231114T221320Z-4242"


def write_history(monitor_dir: Path, n: int = 6, run: str = RUN, at_s: float = NOW) -> Path:
    """A run's history (n snapshots, the last at ``at_s``) and alerts, as the writer lays
    them out; returns the run's directory."""
    directory = monitor_dir / "runs" / run
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "history.jsonl", "w") as fh:
        for i in range(n):
            s = snapshot(at_s=at_s - (n - 1 - i) * 5, run_id=run)
            s["drift"]["champion"]["TX_AMOUNT"]["psi"] = 0.05 * i
            fh.write(json.dumps(s) + "\n")
        fh.write('{"cut by a kill\n')
    (directory / "alerts.jsonl").write_text(json.dumps(ALERT) + "\n")
    return directory


def test_the_report_plots_the_history_and_lists_the_alerts(tmp_path: Path) -> None:
    from pipelines.app.run_report import write_run_report

    run = write_history(tmp_path / "mon")
    page = write_run_report(run, tmp_path / "out")
    text = page.read_text()
    for name in ("throughput", "latency", "lag", "drift_1", "quality", "process"):
        assert (tmp_path / "out" / f"{name}.png").stat().st_size > 1000, name
        assert f'src="{name}.png"' in text
    assert "TX_AMOUNT" in text and "TERMINAL_ID_RISK_7DAY_WINDOW" in text
    assert "Alerts (1)" in text and "TX_AMOUNT drifted" in text and 'class="warning"' in text
    assert f"<td>run</td><td>{RUN}</td>" in text and "<td>snapshots</td><td>6</td>" in text


def test_each_run_is_reported_alone_the_latest_by_default(tmp_path: Path) -> None:
    """The demo's run, then a later one: the report is the latest run's (its snapshots only),
    written beside it; --run names the other (a prefix will do) and its report stays."""
    from pipelines.app.run_report import (
        NoHistory,
        UnknownRun,
        pick_run,
        runs_lines,
        runs_table,
        write_run_report,
    )

    monitor = tmp_path / "mon"
    demo = write_history(monitor, n=6, run="20231114T201320Z-100", at_s=NOW - 7200 + 0.91)
    later = write_history(monitor, n=3, run=RUN)
    (later / "alerts.jsonl").unlink()
    assert pick_run(monitor) == RUN
    assert pick_run(monitor, "20231114T20") == "20231114T201320Z-100"
    first = write_run_report(demo)
    second = write_run_report(later)
    assert first == demo / "report" / "index.html" and second == later / "report" / "index.html"
    assert "<td>snapshots</td><td>6</td>" in first.read_text()
    assert "<td>snapshots</td><td>3</td>" in second.read_text()  # no demo snapshot mixed in
    assert "No alert was raised." in second.read_text()
    rows = runs_table(monitor)
    assert [(r["run"], r["snapshots"], r["alerts"], r["report"]) for r in rows] == [
        ("20231114T201320Z-100", 6, 1, True),
        (RUN, 3, 0, True),
    ]
    assert (rows[0]["from"], rows[0]["to"]) == ("2023-11-14T20:12:55Z", "2023-11-14T20:13:20Z")
    lines = runs_lines(rows)
    assert lines[0].split() == ["run", "from", "to", "snapshots", "predictions", "alerts", "report"]
    assert len({line.index("report") if i == 0 else len(line) - 3 for i, line in
                enumerate(lines)}) == 1  # fmt: skip  # aligned: the last column starts alike
    assert lines[2].split()[0] == RUN and lines[2].split()[-3:] == ["990", "0", "yes"]
    with pytest.raises(UnknownRun, match="--run 2023: names 2 runs"):
        pick_run(monitor, "2023")
    with pytest.raises(UnknownRun, match="--run nope: no such run; the latest: 20231114T2013"):
        pick_run(monitor, "nope")
    with pytest.raises(NoHistory):
        pick_run(tmp_path / "empty")


def rillet(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.app.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "COLUMNS": "160"},
    )


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (
            ["report", "--monitor-dir", "nothing"],
            2,
            [
                "rillet report: --monitor-dir nothing: no run's monitoring history",
                "--monitor_dir=DIR",
            ],
        ),
        (["report"], 2, [".rillet/monitor: no run's monitoring history"]),
        (["report", "--list"], 2, [".rillet/monitor: no run's monitoring history"]),
        (
            ["monitor", "--monitor-dir", "afile", "--once"],
            2,
            ["rillet monitor: --monitor-dir afile is a file"],
        ),
        (
            ["monitor", "--once", "--alert-thresholds", "afile"],
            2,
            ["rillet monitor: alert thresholds afile", "--alert-thresholds"],
        ),
    ],
)
def test_command_errors(tmp_path: Path, args: list[str], code: int, expected: list[str]) -> None:
    (tmp_path / "afile").write_text("not json")
    done = rillet(*args, cwd=tmp_path)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr


def test_monitor_once_and_report_from_the_command_line(tmp_path: Path) -> None:
    waiting = rillet("monitor", "--once", cwd=tmp_path)
    assert waiting.returncode == 0 and "waiting for a job writing" in waiting.stdout
    monitor = tmp_path / ".rillet" / "monitor"
    write_history(monitor, run="20231114T201320Z-100", at_s=NOW - 7200)
    write_history(monitor)
    (monitor / "snapshot.json").write_text(json.dumps(snapshot(run_id=RUN)))
    once = rillet("monitor", "--once", cwd=tmp_path)
    assert once.returncode == 0 and "TX_AMOUNT" in once.stdout and "STALE" in once.stdout
    assert "TX_AMOUNT drifted" not in once.stdout and "0.31 >= 0.25" in once.stdout  # its alert
    done = rillet("report", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"report of run {RUN}: ")
    assert (monitor / "runs" / RUN / "report" / "index.html").exists()
    assert not (monitor / "runs" / "20231114T201320Z-100" / "report").exists()
    listed = rillet("report", "--list", cwd=tmp_path)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 3, listed.stderr
    unknown = rillet("report", "--run", "nope", cwd=tmp_path)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert unknown.stderr.splitlines()[0].startswith("rillet report: --run nope: no such run")
    assert "rillet report --list" in unknown.stderr


def test_a_window_too_small_to_judge_says_so(tmp_path: Path) -> None:
    """40 events (40 duplicates among them) under min_events (200): no rate is shown as a
    verdict; a window of 200 or more shows its rates."""
    small = snapshot(quality_rates={"duplicate_rate": 0.0, "dead_letter_rate": 0.0})
    small["quality_events"] = 40
    out = text_of(render(small, [], directory=tmp_path, now_s=NOW))
    assert out.count("n=40 < 200, not judged") == 4  # every rate, declared or measured
    assert "0.00%" not in out.split("data quality")[1].split("late beyond")[0]
    assert "data quality (last window, 40 events)" in out
    judged = snapshot(quality_rates={"duplicate_rate": 0.03})
    judged["quality_events"] = 1000
    out = text_of(render(judged, [], directory=tmp_path, now_s=NOW))
    assert "not judged" not in out and "3.00%" in out


def test_alerts_show_full_version_ids_and_their_role(tmp_path: Path) -> None:
    """Version ids differ in their last digits: shown whole even on a narrow terminal, with
    the role each has in the job's registry now; the header names both."""
    from pipelines.stores.model_registry import ModelRegistry
    from tests.unit.test_model_registry import make_version

    champion, challenger = "20261207T123307253712Z", "20261207T130101000001Z"
    models = tmp_path / "models"
    for version in (champion, challenger):
        make_version(models, version)
    ModelRegistry(models).register(champion, as_="champion")
    ModelRegistry(models).register(challenger, as_="challenger")
    snap = snapshot(job={"pid": 1, "runner": "DirectRunner", "project": "p",
                         "model_dir": str(models)})  # fmt: skip
    alerts = [
        {**ALERT, "alert_id": "a1", "model_version": champion},
        {**ALERT, "alert_id": "a2", "model_version": challenger, "feature": "score"},
        {**ALERT, "alert_id": "a3", "model_version": "20261101T000000000000Z"},
    ]
    for width in (200, 120):
        out = text_of(render(snap, alerts, directory=tmp_path, now_s=NOW, width=width), width)
        assert f"registry now: champion {champion}, challenger {challenger}" in out
        table = out.split("recent alerts")[1]
        roles = dict(re.findall(r"(\d{8}T\d{12}Z)\s+(\S+)", table))
        assert roles == {
            champion: "champion",
            challenger: "challenger",
            "20261101T000000000000Z": "-",  # a version no longer in a role
        }, table
