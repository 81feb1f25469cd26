"""``rillet monitor`` in a real terminal (tmux) against a running local job: the job writes its
snapshot every second (--monitor_dir, pipelines/local_runner/snapshot.py), the dashboard redraws
in place and shows the throughput, the predictions, the backlog, the Monitor stage's drift rows
and latency, and the alerts it raised (thresholds lowered so that the tiny replay drifts).
Then ``rillet report`` turns the run's history into HTML."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pipelines.core.thresholds import packaged_thresholds_path

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def low_thresholds(path: Path) -> Path:
    """Daily drift windows judged from 10 values, any PSI over the threshold: the tiny replay's
    windows all alert (once per feature)."""
    raw = json.loads(packaged_thresholds_path().read_text())
    raw["drift"].update(
        threshold=0.0001, consecutive=1, window_s=86400, period_s=86400, lateness_s=0, min_count=10
    )
    path.write_text(json.dumps(raw))
    return path


class Tmux:
    """A private tmux server (its own socket) running one command in a 200x60 window."""

    def __init__(self, command: str, cwd: Path) -> None:
        self.socket = f"rillet-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._tmux(
            "new-session", "-d", "-s", "mon", "-x", "200", "-y", "60", "-c", str(cwd), command
        )

    def _tmux(self, *args: str) -> str:
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TMUX")}
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30, env=env
        )
        if done.returncode:
            raise RuntimeError(f"tmux {args[0]}: {done.stderr}")
        return done.stdout

    def screen(self) -> str:
        """The visible pane."""
        return self._tmux("capture-pane", "-p", "-t", "mon")

    def everything(self) -> str:
        """The pane with its whole scrollback."""
        return self._tmux("capture-pane", "-p", "-S", "-", "-t", "mon")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)
        Path(f"/tmp/tmux-{os.getuid()}/{self.socket}").unlink(missing_ok=True)


def figure(screen: str, label: str) -> float | None:
    """The number after ``label`` in the throughput panel (None when absent or '-')."""
    match = re.search(rf"{re.escape(label)} +([\d,.]+)", screen)
    return float(match.group(1).replace(",", "")) if match else None


def test_monitor_shows_a_running_job_live(tiny_frame, model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pipelines.app.local_run import LocalRun
    from pipelines.app.publisher import replay_events

    events = replay_events(tiny_frame)
    thresholds = low_thresholds(tmp_path / "thresholds.json")
    with LocalRun(tmp_path / "stack") as run:
        monitor_dir = run.monitor_dir
        run.start_job(
            [
                f"--model_dir={model_dir}",
                "--monitor_every_s=1",
                "--eval_every_s=2",
                f"--alert_thresholds={thresholds}",
            ]
        )
        python = shlex.quote(sys.executable)
        command = (
            # COLUMNS/LINES of this process would fix rich's size at 80x24: the pane's instead
            f"env -u COLUMNS -u LINES PYTHONPATH={shlex.quote(str(ROOT))} {python} "
            "-m pipelines.app.cli monitor "
            f"--monitor-dir {shlex.quote(str(monitor_dir))} --refresh 1 "
            f"--alert-thresholds {shlex.quote(str(thresholds))}"
        )
        tmux = Tmux(command, tmp_path)
        screens: list[str] = []
        try:

            def wait_screen(done, what: str, timeout_s: float = 240) -> str:  # type: ignore[no-untyped-def]
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline:
                    run.check()
                    screen = tmux.screen()
                    screens.append(screen)
                    if done(screen):
                        return screen
                    time.sleep(1)
                raise AssertionError(f"no {what} within {timeout_s} s; last screen:\n{screens[-1]}")

            wait_screen(lambda s: "job pid" in s, "first snapshot", 180)
            run.replay(events, rate=200, first_alone=True)
            live = wait_screen(
                lambda s: (figure(s, "events/s") or 0) > 0 and (figure(s, "predictions") or 0) > 0,
                "throughput and predictions",
            )
            assert "transactions-rillet" in live and "labels-rillet" in live  # backlog rows
            assert "n/a locally" in live
            run.wait_predicted(len(tiny_frame), timeout_s=300)
            final = wait_screen(
                lambda s: (
                    (figure(s, "predictions") or 0) >= len(tiny_frame)
                    and "over threshold)" in s  # drift rows over the threshold
                    and "(no alert)" not in s
                    and re.search(r"p50 +[\d,]+ ms", s) is not None  # the latency gauges
                ),
                "every prediction, drift rows and drift alerts",
                180,
            )
            assert "score" in final  # the score's drift row
            # In place: the frame changed between captures, the header is on screen once and
            # the scrollback holds no older frame.
            assert len({s for s in screens if "job pid" in s}) > 1
            assert final.count("rillet monitor") == 1
            assert tmux.everything().count("rillet monitor") == 1
        finally:
            print("\n".join(screens[-1:]))  # the last frame, for the test log
            tmux.kill()
        run.stop()

    snapshot = json.loads((monitor_dir / "snapshot.json").read_text())
    assert snapshot["counters"]["predictions_written"] >= len(tiny_frame)
    assert snapshot["drift"] and snapshot["latency_ms"]["p99"] is not None
    assert snapshot["alerts_raised"] >= 1
    assert snapshot["latency_ms"]["p99"] <= snapshot["latency_ms"]["max"]
    run_dir = monitor_dir / "runs" / snapshot["run_id"]  # this job's run
    assert sorted(p.name for p in (monitor_dir / "runs").iterdir()) == [snapshot["run_id"]]
    alerts = [json.loads(line) for line in (run_dir / "alerts.jsonl").read_text().splitlines()]
    assert alerts and len({a["alert_id"] for a in alerts}) == len(alerts)
    assert {a["kind"] for a in alerts} >= {"drift"}

    report = subprocess.run(
        [sys.executable, "-m", "pipelines.app.cli", "report", "--monitor-dir", str(monitor_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith(f"report of run {snapshot['run_id']}: ")
    page = (run_dir / "report" / "index.html").read_text()
    assert "TX_AMOUNT" in page and f"Alerts ({len(alerts)})" in page
