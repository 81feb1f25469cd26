"""``make bench-memory``: the keyed stages' memory is bounded by ``--window_cache_mb``.

Two runs of the streaming job (DirectRunner, a child process) on the same input, each on its own
stack over a store warmed with the weeks before the stretch (the backfill, as every new Dataflow
job starts): a stretch of the handbook preset (all 5,000 cards and 10,000 terminals) published as
a backlog, with the window caches at a small budget and, as the baseline, at a budget no run of
this size reaches. The job's RSS is sampled every second while the backlog drains.

With the small budget the caches fill within the first part of the run (every entity of the
warmed store read once is ~300 MB of state) and the RSS then stays flat while events keep coming;
the baseline's RSS keeps growing as it touches new entities. The last line is one JSON object:
RSS (MB) when a quarter of the transactions were predicted, and the peak, for both runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

from pipelines.app.local_run import LocalRun
from pipelines.app.publisher import replay_events

HANDBOOK_START = pd.Timestamp("2018-04-01", tz="UTC")


def run_once(
    data_dir: Path, stretch: pd.DataFrame, start: str, cache_mb: float, work: Path, model: Path
) -> dict[str, Any]:
    """One run: warm the store, publish the stretch as a backlog, start the job, sample RSS."""
    events = replay_events(stretch.reset_index(drop=True))
    n_tx = len(stretch)
    with LocalRun(work / f"state-{cache_mb:g}") as run:
        run.warm_store(data_dir, work / f"warm-{cache_mb:g}", start)
        run.publish(events)
        job = run.start_job([f"--model_dir={model}", f"--window_cache_mb={cache_mb}"])
        assert job.proc is not None
        proc = psutil.Process(job.proc.pid)
        samples: list[tuple[float, int, float]] = []  # (s, predicted, rss MB)
        began = time.monotonic()

        def done() -> bool:
            rss = proc.memory_info().rss / 2**20
            samples.append((time.monotonic() - began, run.predicted(), rss))
            return samples[-1][1] >= n_tx

        run.wait_for(done, 3600, "the backlog was not predicted within an hour", poll_s=1.0)
        run.stop()
    quarter = next(rss for _, n, rss in samples if n >= n_tx // 4)
    peak = max(rss for _, _, rss in samples)
    last_half = [rss for _, n, rss in samples if n >= n_tx // 2]
    return {
        "window_cache_mb": cache_mb,
        "rss_mb_at_quarter": round(quarter, 1),
        "rss_mb_peak": round(peak, 1),
        "rss_mb_growth_after_quarter": round(peak - quarter, 1),
        "rss_mb_second_half_range": round(max(last_half) - min(last_half), 1),
        "seconds": round(samples[-1][0], 1),
        "samples": [
            (round(t, 1), n, round(r, 1)) for t, n, r in samples[:: max(1, len(samples) // 40)]
        ],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", default="2018-07-01", help="First day of the stretch.")
    parser.add_argument("--days", type=int, default=4, help="Days replayed (>= 1).")
    parser.add_argument("--budget-mb", type=float, default=24.0, help="The small cache budget.")
    parser.add_argument("--baseline-mb", type=float, default=4096.0, help="The baseline's.")
    args = parser.parse_args(argv)
    if args.days < 1 or args.budget_mb <= 0 or args.baseline_mb <= args.budget_mb:
        parser.error("need --days >= 1 and 0 < --budget-mb < --baseline-mb")

    from models.export import export_model
    from models.train import TrainConfig, train_model
    from pipelines.app.simulator import PRESETS, simulate, write_dataset
    from pipelines.core.training_data import training_features

    frame = simulate(PRESETS["handbook"])
    start = pd.Timestamp(args.start, tz="UTC")
    end = start + pd.Timedelta(days=args.days)
    stretch = frame[(frame.TX_DATETIME >= start) & (frame.TX_DATETIME < end)]
    work = Path(tempfile.mkdtemp(prefix="rillet-memory-"))
    write_dataset(frame[frame.TX_DATETIME < start], work / "data")
    train = frame[
        (frame.TX_DATETIME >= start - pd.Timedelta(days=14)) & (frame.TX_DATETIME < start)
    ]
    model, _ = train_model(training_features(train), None, TrainConfig(num_trees=20))
    export_model(model, work / "models", {"purpose": "bench-memory"})
    results = []
    for budget in (args.budget_mb, args.baseline_mb):
        print(f"run with --window_cache_mb={budget:g} ...", file=sys.stderr)
        result = run_once(work / "data", stretch, args.start, budget, work, work / "models")
        print({k: v for k, v in result.items() if k != "samples"}, file=sys.stderr)
        results.append(result)
    small, baseline = results
    print(
        json.dumps(
            {
                "transactions": len(stretch),
                "days": args.days,
                "budget": small,
                "baseline": baseline,
                "growth_ratio": round(
                    small["rss_mb_growth_after_quarter"]
                    / max(baseline["rss_mb_growth_after_quarter"], 1.0),
                    3,
                ),
            }
        )
    )


if __name__ == "__main__":
    from bench.memory import main as _main

    _main()
