"""``make bench-scaleout``: how far the keyed stages could scale out, from their measured per-key
work, replayed on 1..256 simulated workers.

A) Measurement, on Dataflow streaming's work-item model: the product's stages (taken from
   ``build_pipeline``'s graph) run by bench/dataflow_model with one key per work item, one worker
   and one thread, no faults, over a handbook stretch of ``--days`` (2) days of ``--customers``
   (1,500) cards on a store warmed with the weeks before it, against the emulators. Each
   committed work item's time in its worker is recorded with its stage and key: the per-item
   costs Dataflow will give, store round trips included (a work item pays its own reads and
   writes, and the terminal stage's work item also runs inference and the sinks, fused). A
   second run moves ``--hot-share`` (5%) of the stretch's transactions to one terminal: its
   work items give one key's ceiling (events/s once its work items are full).

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

Only stateful work is simulated (the terminal stage's items include the inference and sinks
fused into them); the parse steps parallelise per message and are assumed not to be the
bottleneck. The last stdout line is one JSON object; it
only holds recorded work (exit status 1 if nothing was recorded, unless ``--allow-empty``).
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
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


STATEFUL_STEPS = ("IndexIds", "CustomerWindows", "TerminalWindows")
# The busiest entity's rate the row size is reported at (README "Feature store schema").
ROW_RATE_EVENTS_PER_S = 10_000


def single_key_work(attempts: Path) -> dict[str, list[tuple[str, float, int]]]:
    """(key, seconds, elements) of every committed work item of the stateful steps, from the
    runner model's attempt log."""
    steps: dict[str, list[tuple[str, float, int]]] = {name: [] for name in STATEFUL_STEPS}
    with attempts.open() as log:
        for line in log:
            entry = json.loads(line)
            # "ComputeFeatures/IndexIds/ParDo(IndexIds)": the stage's own segment names it.
            step = next((n for n in STATEFUL_STEPS if n in entry["stage"].split("/")), "")
            if entry["outcome"] != "committed" or not step or entry.get("timers"):
                continue
            for key in entry["keys"]:
                steps[step].append((key, entry["seconds"] / len(entry["keys"]), entry["elements"]))
    return steps


def measure(
    work_dir: Path, days: int, customers: int, start: str, hot_share: float, reuse: bool = False
) -> dict:
    """One run of the stages on the work-item model (see the module docstring); with ``reuse``,
    the run already in ``work_dir`` (its result.json and attempt log) is analysed again."""
    from bench.chaos_dataflow import DataflowChaosConfig, run

    if reuse and (work_dir / "result.json").exists():
        result = json.loads((work_dir / "result.json").read_text())
        return _measured(result, work_dir)

    config = DataflowChaosConfig(
        work_dir=work_dir,
        workers=1,
        threads=1,
        days=days,
        customers=customers,
        start=start,
        source_batch=1,  # Pub/Sub messages one by one: each reaches the stages on its own
        jitter=0,
        late=0.0,
        very_late=0.0,
        early_labels=0.0,
        redeliveries=0.0,
        fail_after_bigtable=0.0,
        fail_after_datastore=0.0,
        fail_after_publish=0.0,
        fail_before_commit=0.0,
        zombie_rate=0.0,
        move_rate=0.0,
        hot_share=hot_share,
    )
    return _measured(run(config), work_dir)


def _measured(result: dict, work_dir: Path) -> dict:
    wrong = {
        k: result[k] for k in ("lost", "duplicated", "feature_mismatches", "stale_predictions")
    }
    if any(wrong.values()):
        raise SystemExit(f"the measured run was not exact: {wrong}")
    return {
        "events_published": result["transactions"] + result["labels"],
        "transactions": result["transactions"],
        "work_items": result["work_items"],
        "stream_s": result["timings_s"]["stream_s"],
        "work": single_key_work(work_dir / "attempts.jsonl"),
    }


def key_ceiling(items: Sequence[tuple[float, int]], full: int = 100) -> dict[str, float]:
    """One key's ceiling from its work items (seconds, elements): a least-squares fit of
    seconds = a + b x elements; the events/s of one event per item, of full items (``full``
    elements: the most a work item takes, ModelConfig.elements_per_item) and the asymptote."""
    import numpy as np

    if len(items) < 3:
        raise ValueError("too few work items of the hot key to fit its cost")
    t = np.array([s for s, _ in items], dtype=float)
    n = np.array([e for _, e in items], dtype=float)
    if np.ptp(n) == 0:
        a, b = 0.0, float(t.mean() / n[0])
    else:
        b, a = (float(x) for x in np.polyfit(n, t, 1))
        a, b = max(a, 0.0), max(b, 1e-9)
    return {
        "item_overhead_ms": round(1000 * a, 3),
        "per_event_ms": round(1000 * b, 3),
        "events_per_s_one_per_item": round(1 / (a + b), 1),
        "events_per_s_full_items": round(full / (a + b * full), 1),
        "events_per_s_limit": round(1 / b, 1),
        "items": len(items),
        "mean_elements": round(float(n.mean()), 2),
    }


def store_round_trip_ms(work_dir: Path) -> float:
    """The median time of a one-row Bigtable read on a fresh emulator stack (what every
    work item's store round trip costs here)."""
    import statistics

    from pipelines.app.local_run import LocalRun
    from pipelines.core.declarations import load_definitions
    from pipelines.core.window_cells import Layout
    from pipelines.stores.bigtable import FeatureStore, StoreConfig

    defs = load_definitions()
    terminal = Layout.of(defs, defs.entity("terminal"))
    with LocalRun(work_dir / "rtt-stack", fresh="rtt") as local:
        t = local.topology
        store = FeatureStore(StoreConfig(t.project, t.bigtable_instance, t.bigtable_table))
        store.read_buckets(terminal, [("warm", 1)], labels=True)  # the channel's first call
        times = []
        for i in range(200):
            started = time.perf_counter()
            store.read_buckets(terminal, [("x", i)], labels=True)
            times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times), 3)


def hot_entity_section(hot_run: dict, share: float, rate: float, rtt_ms: float) -> dict[str, Any]:
    """The hot entity: its largest row at ``rate`` events/s in total, and its key's ceiling
    (measured on the emulator, and with Bigtable's documented single-row latency instead)."""
    from bench.chaos_dataflow import HOT_TERMINAL
    from pipelines.core.declarations import load_definitions
    from pipelines.core.window_cells import Layout
    from pipelines.stores.bigtable import bucket_row_bytes

    items = [(s, e) for k, s, e in hot_run["work"]["TerminalWindows"] if k == str(HOT_TERMINAL)]
    ceiling = key_ceiling(items)
    # Half the reference workload's events are labels: the entity gets share x rate events, a
    # transaction and, a week later, its label (in the transaction's bucket).
    per_kind = rate * share / 2
    defs = load_definitions()
    customer, terminal = defs.entity("customer"), defs.entity("terminal")
    row = bucket_row_bytes(
        Layout.of(defs, terminal), per_kind, per_kind, len(defs.window_features(customer))
    )
    # A terminal work item makes about four store round trips (the bucket rows' write, the
    # Datastore lookup and commit, the publish's ack); on Bigtable and Datastore each is a few
    # milliseconds (Bigtable: "single-digit millisecond latency"), not the emulator's.
    cloud_ms = 6.0
    overhead = ceiling["item_overhead_ms"] + 4 * max(cloud_ms - rtt_ms, 0.0)
    full = 100
    return {
        "share": share,
        "largest_row_bytes": row,
        "largest_row_at_events_per_s": rate,
        "key_ceiling_events_per_s": ceiling["events_per_s_full_items"],
        "key_ceiling": ceiling,
        "store_latency_ms": {"emulator_measured": rtt_ms, "bigtable_assumed": cloud_ms},
        "key_ceiling_events_per_s_bigtable_latency": round(
            full / ((overhead + ceiling["per_event_ms"] * full) / 1000), 1
        ),
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
    parser.add_argument("--days", type=int, default=2, help="Days of the stretch replayed.")
    parser.add_argument("--customers", type=int, default=1500, help="Cards kept.")
    parser.add_argument("--start", default="2018-05-16", help="The stretch's first day.")
    parser.add_argument("--hot-share", type=float, default=HOT_SHARE, help="The hot terminal's.")
    parser.add_argument("--work-dir", type=Path, default=Path(".rillet/bench-scaleout"))
    parser.add_argument(
        "--allow-empty", action="store_true", help="Report (exit 0) if no stage recorded work."
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="Analyse the runs already in --work-dir (run/, hot/) instead of running them again.",
    )
    args = parser.parse_args(argv)
    if args.days < 1 or args.customers < 1 or not 0 < args.hot_share < 1:
        parser.error("need --days >= 1, --customers >= 1 and 0 < --hot-share < 1")
    command = " ".join(["python -m bench.scaleout", *(sys.argv[1:] if argv is None else argv)])

    args.work_dir.mkdir(parents=True, exist_ok=True)
    measured = measure(
        args.work_dir / "run", args.days, args.customers, args.start, 0.0, args.reuse
    )
    steps = {k: [(key, s) for key, s, _ in v] for k, v in measured.pop("work").items() if v}
    hot = measure(
        args.work_dir / "hot", args.days, args.customers, args.start, args.hot_share, args.reuse
    )
    rtt = store_round_trip_ms(args.work_dir)
    run = {**measured, "command": command}
    if steps:
        save_work(steps, args.work_dir / "recorded-work.json.gz")
    print(f"measured: {run}", file=sys.stderr)
    result = final_result(steps, run, args.allow_empty)
    result["work_item_model"] = "single_key"
    result["hot_entity"] = {
        **hot_entity_section(hot, args.hot_share, ROW_RATE_EVENTS_PER_S, rtt),
        "simulated": result["hot_entity"],
    }
    print(json.dumps(result))


def final_result(steps: Mapping[str, Work], run: dict[str, Any], allow_empty: bool) -> dict:
    """The JSON line: the report of the recorded work, with ``measured``. Without recorded work:
    exits 1 (printing the error as the JSON line) unless ``allow_empty``."""
    if not steps:
        message = (
            "no keyed stage recorded any work item: the stages of this checkout are not "
            "stateful steps of the graph; --allow-empty reports an empty stateful_steps"
        )
        print(message, file=sys.stderr)
        if not allow_empty:
            print(json.dumps({"error": message, "measured": run}))
            raise SystemExit(1)
    result = report(steps, run["events_published"])
    recorded = sum(sum(s for _, s in work) for work in steps.values())
    # How much of the run the stateful work items account for (the rest: the parse steps,
    # the runner model's own bookkeeping).
    run = {**run, "recorded_seconds": round(recorded, 3)}
    result["measured"] = run
    return result


if __name__ == "__main__":
    # Through the importable module (Beam pickles __main__'s functions by value).
    from bench.scaleout import main as _main

    _main()
