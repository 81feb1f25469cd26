"""``make bench-scaleout``: how far the keyed stages could scale out, from their measured per-key
work, replayed on 1..256 simulated workers.

A) Measurement. One run of the real streaming pipeline (DirectRunner, in this process) on its own
   emulator stack, fed a backlog of ``--days`` (7) days of the handbook preset (transactions and
   their labels, pipelines.app.publisher.replay_events), with pipelines.transforms.key_stats
   enabled: every keyed stage records, per event, its key and its share of the step's time. Once
   every transaction is predicted (and the recorded work has stopped growing), the registry is
   read.

B) Simulation (``simulate_step``, ``simulate_pipeline``: pure functions). Beam runs one key on one
   thread at a time, so a key is the unit of parallelism. Per step, the recorded events (key,
   seconds) are a backlog; each key goes to one worker (``hash``: crc32(key) mod P, as Dataflow
   spreads key ranges over workers; ``greedy``: heaviest key first onto the least-loaded worker,
   the best any key-to-worker assignment can do); a worker runs one event at a time. Everything
   is queued at t = 0, so a worker is busy until the sum of its events' seconds: makespan = the
   most loaded worker, throughput = events / makespan. The steps pipeline with each other, so the
   pipeline's throughput is the slowest step's, counted in input events (events published to the
   job / the slowest step's makespan). ``global_key_events_per_s`` is the same replay with every
   event of a step on one key: it does not scale (it equals the pipeline at 1 worker, each step
   on its own worker); ``global_key_one_stage_events_per_s`` puts all steps' work on one key of
   one stage, like the single sequenced stage the keyed stages replace. The
   ``hot_entity`` section re-keys 5% of the terminal step's events to one merchant: that key's
   worker bounds the step at about 1 / share (20x) whatever the number of workers.

Only stateful work is simulated: stateless steps (parse, inference, sinks) parallelise per
element and are assumed not to be the bottleneck. The last stdout line is one JSON object; it
only holds recorded work (exit status 1 if nothing was recorded, unless ``--allow-empty``).
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORKERS: tuple[int, ...] = (1, 4, 16, 64, 256)
HOT_KEY = "hot-merchant"
HOT_SHARE = 0.05
SYNTHETIC_COST_S = 1e-4  # per event, for synthetic_work (tests and the empty-run preview only)

Work = Sequence[tuple[str, float]]  # (key, seconds) per event, in processing order


# --------------------------------------------------------------------------------------------
# B) Simulation
# --------------------------------------------------------------------------------------------


def hash_worker(key: str, workers: int) -> int:
    """The worker of ``key`` among ``workers``: crc32 of its UTF-8 bytes, mod workers (stable
    across processes, unlike hash())."""
    return zlib.crc32(key.encode()) % workers


def key_loads(work: Work) -> dict[str, float]:
    """Seconds of work per key."""
    loads: dict[str, float] = defaultdict(float)
    for key, seconds in work:
        loads[key] += seconds
    return dict(loads)


def assign(loads: Mapping[str, float], workers: int, how: str = "hash") -> dict[str, int]:
    """Key -> worker. ``hash``: crc32 mod workers. ``greedy`` (LPT): keys by decreasing load (ties
    by key), each onto the least-loaded worker (ties by lowest index)."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if how == "hash":
        return {key: hash_worker(key, workers) for key in loads}
    if how == "greedy":
        heap = [(0.0, w) for w in range(workers)]
        out = {}
        for key in sorted(loads, key=lambda k: (-loads[k], k)):
            load, w = heapq.heappop(heap)
            out[key] = w
            heapq.heappush(heap, (load + loads[key], w))
        return out
    raise ValueError(f"unknown assignment {how!r} (hash or greedy)")


@dataclass(frozen=True)
class StepRun:
    """One step's backlog replayed on ``workers`` workers."""

    workers: int
    events: int
    seconds: float  # total work
    makespan: float  # the most loaded worker's busy time

    @property
    def events_per_s(self) -> float:
        return self.events / self.makespan if self.makespan > 0 else float("inf")


def simulate_step(work: Work, workers: int, how: str = "hash") -> StepRun:
    """Replays ``work`` on ``workers`` workers, one key per worker, one event at a time per worker.

    With the whole backlog queued at t = 0 and no key on two workers, a worker never idles until
    its queue is empty: its finish time is the sum of its events' seconds, whatever their order.
    """
    loads = key_loads(work)
    busy = [0.0] * workers
    for key, w in assign(loads, workers, how).items():
        busy[w] += loads[key]
    return StepRun(workers, len(work), sum(loads.values()), max(busy, default=0.0))


def global_key(work: Work, key: str = "global") -> list[tuple[str, float]]:
    """The same events, all on one key."""
    return [(key, seconds) for _, seconds in work]


def simulate_pipeline(
    steps: Mapping[str, Work],
    input_events: int,
    workers: Sequence[int] = WORKERS,
    how: str = "hash",
) -> dict[str, list[float]]:
    """Events/s per step (its own events) and for the pipeline (input events: ``input_events``
    over the slowest step's makespan, i.e. the minimum over steps) at each worker count."""
    out: dict[str, list[float]] = {name: [] for name in steps}
    out["pipeline"] = []
    for p in workers:
        runs = {name: simulate_step(work, p, how) for name, work in steps.items()}
        for name, run in runs.items():
            out[name].append(run.events_per_s)
        slowest = max((run.makespan for run in runs.values()), default=0.0)
        out["pipeline"].append(input_events / slowest if slowest > 0 else float("inf"))
    return out


def with_hot_key(
    work: Work, share: float = HOT_SHARE, key: str = HOT_KEY
) -> list[tuple[str, float]]:
    """``work`` with a ``share`` of its events (evenly spread: every 1/share-th) re-keyed to one
    ``key`` (a big merchant); seconds and order unchanged."""
    if not 0 < share <= 1:
        raise ValueError("share must be in (0, 1]")
    out = []
    moved = 0
    for i, (k, seconds) in enumerate(work):
        if moved < share * (i + 1) - 1e-9:  # keeps moved / seen at ~share all along
            out.append((key, seconds))
            moved += 1
        else:
            out.append((k, seconds))
    return out


def step_summary(work: Work) -> dict[str, Any]:
    """distinct_keys, hottest_key (its share of the events and of the seconds), events, seconds."""
    events = Counter(key for key, _ in work)
    loads = key_loads(work)
    total = sum(loads.values())
    n = events.most_common(1)[0][1] if events else 0
    return {
        "distinct_keys": len(events),
        "hottest_key_share": round(n / len(work), 6) if work else 0.0,
        "hottest_key_seconds_share": round(max(loads.values()) / total, 6) if total > 0 else 0.0,
        "events": len(work),
        "seconds": round(total, 6),
    }


def _hot_step(names: Sequence[str]) -> str:
    """The terminal step: the first label naming a terminal, else the last step."""
    for name in names:
        if "terminal" in name.lower():
            return name
    return sorted(names)[-1]


def hot_entity(
    work: Work, step: str, workers: Sequence[int] = WORKERS, share: float = HOT_SHARE
) -> dict[str, Any]:
    """The step's throughput with ``share`` of its events on one key, hash and greedy."""
    hot = with_hot_key(work, share)
    summary = step_summary(hot)
    by_hash = [simulate_step(hot, p, "hash").events_per_s for p in workers]
    by_greedy = [simulate_step(hot, p, "greedy").events_per_s for p in workers]
    cap = 1 / summary["hottest_key_seconds_share"] if summary["hottest_key_seconds_share"] else 0
    return {
        "step": step,
        "key": HOT_KEY,
        "share_moved": share,
        "hottest_key_share": summary["hottest_key_share"],
        "hottest_key_seconds_share": summary["hottest_key_seconds_share"],
        "speedup_cap": round(cap, 2),
        "events_per_s": _round(by_hash),
        "greedy_events_per_s": _round(by_greedy),
        "speedup": _round([x / by_hash[0] for x in by_hash], 2),
        "greedy_speedup": _round([x / by_greedy[0] for x in by_greedy], 2),
    }


def _round(values: Sequence[float], digits: int = 1) -> list[float]:
    return [round(v, digits) for v in values]


def report(
    steps: Mapping[str, Work], input_events: int, workers: Sequence[int] = WORKERS
) -> dict[str, Any]:
    """Every field of the JSON line but ``measured``, from per-step work."""
    if not steps:
        return {
            "stateful_steps": {},
            "simulated_workers": list(workers),
            "simulated_events_per_s": {},
            "greedy_events_per_s": {},
            "global_key_events_per_s": [],
            "global_key_one_stage_events_per_s": None,
            "speedup_64": None,
            "hot_entity": None,
        }
    by_hash = simulate_pipeline(steps, input_events, workers, "hash")
    by_greedy = simulate_pipeline(steps, input_events, workers, "greedy")
    one_key = simulate_pipeline(
        {name: global_key(work) for name, work in steps.items()}, input_events, workers
    )
    pipeline = by_hash["pipeline"]
    speedup_64 = pipeline[list(workers).index(64)] / pipeline[0] if 64 in workers else None
    hot = _hot_step(list(steps))
    return {
        "stateful_steps": {name: step_summary(work) for name, work in steps.items()},
        "simulated_workers": list(workers),
        "simulated_events_per_s": {k: _round(v) for k, v in by_hash.items()},
        "greedy_events_per_s": {k: _round(v) for k, v in by_greedy.items()},
        "global_key_events_per_s": _round(one_key["pipeline"]),
        # Every step's work on one key of one stage (the single sequenced stage they replace).
        "global_key_one_stage_events_per_s": round(
            input_events / sum(sum(s for _, s in work) for work in steps.values()), 1
        ),
        "speedup_64": round(speedup_64, 2) if speedup_64 is not None else None,
        "hot_entity": hot_entity(steps[hot], hot, workers),
    }


def synthetic_work(frame: Any, cost_s: float = SYNTHETIC_COST_S) -> dict[str, list]:
    """Made-up work for developing the simulation (never in the JSON line): per transaction of a
    simulate()-style frame, one event of ``cost_s`` on its customer, its terminal and its id."""
    columns = {
        "customer": "CUSTOMER_ID",
        "terminal": "TERMINAL_ID",
        "transaction": "TRANSACTION_ID",
    }
    return {
        f"synthetic_{name}": [(str(k), cost_s) for k in frame[column].to_numpy()]
        for name, column in columns.items()
    }


# --------------------------------------------------------------------------------------------
# A) Measurement
# --------------------------------------------------------------------------------------------


def handbook_frame(days: float, limit: int | None) -> Any:
    """The first ``days`` days of the handbook preset (at most ``limit`` transactions)."""
    import pandas as pd

    from pipelines.app.simulator import PRESETS, simulate

    frame = simulate(PRESETS["handbook"]).sort_values("TX_DATETIME", kind="stable")
    start = frame["TX_DATETIME"].iloc[0].normalize()
    frame = frame[frame["TX_DATETIME"] < start + pd.Timedelta(days=days)]
    if limit is not None:
        frame = frame.head(limit)
    return frame.reset_index(drop=True)


def model_for(frame: Any, model_dir: Path) -> Path:
    """Reuses the model in ``model_dir`` if the pipeline accepts it, else trains a small one on
    ``frame`` (any model serves: this run measures work, not accuracy)."""
    from pipelines.transforms.inference import resolve_model

    try:
        resolve_model(str(model_dir))
        print(f"reusing the model in {model_dir}", file=sys.stderr)
        return model_dir
    except (FileNotFoundError, ValueError, KeyError):
        pass
    from models.export import export_model
    from models.train import TrainConfig, train_model
    from pipelines.core.training_data import training_features

    model, _ = train_model(training_features(frame), None, TrainConfig(num_trees=20))
    export_model(model, model_dir, {"purpose": "bench-scaleout"})
    return model_dir


def _recorded_events() -> int:
    from pipelines.transforms.key_stats import key_stats

    stats = key_stats()
    return sum(sum(stats.events(step).values()) for step in stats.steps())


def measure(
    run: Any, events: list, n_tx: int, model_dir: Path, timeout_s: float, settle_s: float
) -> dict:
    """Publishes ``events`` as a backlog, runs the pipeline (in this process: the registry is
    read here) with key_stats on until every transaction is predicted and the recorded work
    stops growing for ``settle_s``."""
    from pipelines.transforms.key_stats import key_stats

    key_stats().reset()
    key_stats().enable()
    t0 = time.monotonic()
    published = run.publish(events)
    print(f"published {published:,} events in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    run.start_pipeline([f"--model_dir={model_dir}"])
    started = time.monotonic()
    last_log = [started]

    def progress(predicted: int) -> None:
        if time.monotonic() - last_log[0] > 30:
            last_log[0] = time.monotonic()
            print(
                f"  {predicted:,}/{n_tx:,} predicted, {last_log[0] - started:.0f} s",
                file=sys.stderr,
            )

    try:
        wall = run.wait_predicted(n_tx, timeout_s, progress=progress, poll_s=0.2)
    except TimeoutError as exc:
        raise SystemExit(f"timed out: {exc}") from None
    predicted = run.predicted()
    # Labels after the last transaction may still be in a stage: wait until nothing new is
    # recorded for settle_s (at most 10 settle periods).
    seen, quiet_since, stop = _recorded_events(), time.monotonic(), time.monotonic() + 10 * settle_s
    while time.monotonic() - quiet_since < settle_s and time.monotonic() < stop:
        time.sleep(0.2)
        now_seen = _recorded_events()
        if now_seen != seen:
            seen, quiet_since = now_seen, time.monotonic()
    run.stop()
    stats = key_stats()
    steps = {step: stats.work(step) for step in stats.steps()}
    return {
        "events_published": published,
        "transactions": n_tx,
        "transactions_predicted": predicted,
        "wall_s": round(wall, 1),
        "events_per_s": round(published / wall, 1),
        "steps": steps,
    }


def save_work(steps: Mapping[str, Work], path: Path) -> None:
    """The recorded work, gzipped JSON {step: [[key, seconds], ...]} (to re-simulate offline)."""
    import gzip

    with gzip.open(path, "wt") as handle:
        json.dump({step: [list(e) for e in work] for step, work in steps.items()}, handle)


def load_work(path: Path) -> dict[str, list[tuple[str, float]]]:
    import gzip

    with gzip.open(path, "rt") as handle:
        return {step: [(k, s) for k, s in work] for step, work in json.load(handle).items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=7, help="Days of the handbook replayed.")
    parser.add_argument("--limit", type=int, default=None, help="At most N transactions.")
    parser.add_argument("--work-dir", type=Path, default=Path(".rillet/bench-scaleout"))
    parser.add_argument("--timeout", type=float, default=3600, help="Seconds to wait at most.")
    parser.add_argument("--settle", type=float, default=3.0, help="Quiet seconds at the end.")
    parser.add_argument(
        "--allow-empty", action="store_true", help="Report (exit 0) if no stage recorded work."
    )
    args = parser.parse_args(argv)
    command = " ".join(["python -m bench.scaleout", *(sys.argv[1:] if argv is None else argv)])

    from pipelines.app.local_run import LocalRun
    from pipelines.app.publisher import replay_events

    frame = handbook_frame(args.days, args.limit)
    events = replay_events(frame)
    print(f"{len(events):,} events ({len(frame):,} transactions + labels)", file=sys.stderr)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    model_dir = model_for(frame, args.work_dir / "models")

    state = args.work_dir / f"state-{uuid.uuid4().hex[:6]}"
    with LocalRun(state, fresh="scale") as local:
        run = measure(local, events, len(frame), model_dir, args.timeout, args.settle)
    steps = run.pop("steps")
    run["command"] = command
    if steps:
        save_work(steps, args.work_dir / "recorded-work.json.gz")
        print(f"recorded work saved to {args.work_dir / 'recorded-work.json.gz'}", file=sys.stderr)
    print(f"measured: {run}", file=sys.stderr)
    if not steps:
        preview = report(synthetic_work(frame), len(events))
        print(
            "synthetic preview (1e-4 s per event on customer/terminal/transaction keys; NOT "
            f"measured, not in the JSON): pipeline {preview['simulated_events_per_s']['pipeline']}"
            f" events/s, hot entity {preview['hot_entity']['speedup']}",
            file=sys.stderr,
        )
    print(json.dumps(final_result(steps, run, args.allow_empty)))


def final_result(steps: Mapping[str, Work], run: dict[str, Any], allow_empty: bool) -> dict:
    """The JSON line: the report of the recorded work, with ``measured``. Without recorded work:
    exits 1 (printing the error as the JSON line) unless ``allow_empty``."""
    if not steps:
        message = (
            "no keyed stage recorded any work (pipelines.transforms.key_stats): the stages of "
            "this checkout are not keyed by entity; --allow-empty reports an empty stateful_steps"
        )
        print(message, file=sys.stderr)
        if not allow_empty:
            print(json.dumps({"error": message, "measured": run}))
            raise SystemExit(1)
    result = report(steps, run["events_published"])
    recorded = sum(sum(s for _, s in work) for work in steps.values())
    # How much of the run the keyed stages account for (the rest: runner, parse, model, sinks).
    run = {**run, "recorded_seconds": round(recorded, 3)}
    result["measured"] = run
    return result


if __name__ == "__main__":
    # Through the importable module: the stages record into bench.scaleout's key_stats registry
    # (Beam pickles __main__'s functions by value).
    from bench.scaleout import main as _main

    _main()
