"""``make bench-e2e``: the streaming pipeline's throughput against a read-only baseline, and its
latency at half that throughput, on the DirectRunner against the real emulators.

In one run, on the same input (the first N transactions of the small preset and their labels):

  1. read-only: ReadFromPubSub + ParseEvents for both streams, from a backlog;
  2. full: the whole pipeline (features, inference, Datastore, prediction topic), same backlog;
  3. latency: the full pipeline on a fresh store, the same events published at half of (2)'s
     rate; event-to-prediction latency = prediction processing time - Pub/Sub publish time.

Each phase has its own subscriptions, table and Datastore kind (LocalRun's ``fresh``): it reads
only its own messages and starts from an empty store. Throughput is measured between 10% and 90%
of the transactions done (start-up excluded): parsed, for the read-only pipeline (counted
in-process); predicted, for the full pipeline (seen on the prediction topic). Both pipelines read
both streams; events/s counts transactions and labels
(transactions/s x events/transactions). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np

from pipelines.app.local_run import LocalRun, percentiles
from pipelines.app.publisher import replay_events
from pipelines.core.declarations import load_definitions
from pipelines.transforms.parse import ParseEvents

_PARSED = [0]
_LOCK = threading.Lock()


def _count(event: Any) -> None:
    with _LOCK:
        _PARSED[0] += 1


def _watch(run: LocalRun, progress: Any, total: int, timeout_s: float) -> list[tuple[float, int]]:
    """Samples (time, transactions done) until ``total`` are done."""
    samples: list[tuple[float, int]] = []

    def done() -> bool:
        samples.append((time.monotonic(), progress()))
        return samples[-1][1] >= total

    run.wait_for(done, timeout_s, lambda: f"timed out: {samples[-1][1]} of {total}", poll_s=0.1)
    return samples


def _rate(samples: list[tuple[float, int]], total: int) -> float:
    """Transactions/s between 10% and 90% of the total (interpolated on the samples)."""
    t = np.array([s[0] for s in samples])
    n = np.array([s[1] for s in samples], dtype=float)
    keep = np.concatenate([[True], np.diff(n) > 0])  # np.interp needs increasing x
    t10, t90 = np.interp([0.1 * total, 0.9 * total], n[keep], t[keep])
    return 0.8 * total / max(t90 - t10, 1e-9)


def _read_only_graph(topology: Any) -> Any:
    """ReadFromPubSub + ParseEvents of both input streams, counting parsed transactions."""

    def build(p: Any, options: Any) -> None:
        defs = load_definitions()
        for kind, name in (
            ("transaction", topology.transactions_subscription),
            ("label", topology.labels_subscription),
        ):
            path = f"projects/{topology.project}/subscriptions/{name}"
            stream = defs.events if kind == "transaction" else defs.labels
            parsed = (
                p
                | f"Read{kind}" >> beam.io.ReadFromPubSub(subscription=path, with_attributes=True)
                | f"Parse{kind}" >> ParseEvents(kind, path, stream)
            )
            if kind == "transaction":
                _ = parsed.valid | "Count" >> beam.Map(_count)

    return build


def read_only(stack: Any, events: list, model_dir: Path, timeout_s: float) -> float:
    n_tx = sum(e.topic == "transactions" for e in events)
    with LocalRun(stack=stack, fresh="bench-ro") as run:
        run.publish(events)
        _PARSED[0] = 0
        run.start_pipeline([f"--model_dir={model_dir}"], build=_read_only_graph(run.topology))
        samples = _watch(run, lambda: _PARSED[0], n_tx, timeout_s)
    return _rate(samples, n_tx) * len(events) / n_tx


def full(stack: Any, events: list, model_dir: Path, timeout_s: float) -> tuple[float, int]:
    n_tx = sum(e.topic == "transactions" for e in events)
    with LocalRun(stack=stack, fresh="bench-full") as run:
        run.publish(events)  # a backlog
        run.start_pipeline([f"--model_dir={model_dir}"])
        samples = _watch(run, run.predicted, n_tx, timeout_s)
        time.sleep(2)  # late corrections
        run.stop()
    return _rate(samples, n_tx) * len(events) / n_tx, run.corrections()


def latency(
    stack: Any, events: list, model_dir: Path, rate: float, timeout_s: float
) -> dict[str, float]:
    n_tx = sum(e.topic == "transactions" for e in events)
    with LocalRun(stack=stack, fresh="bench-latency") as run:
        run.start_pipeline([f"--model_dir={model_dir}"])
        time.sleep(5)  # let the pipeline start (model load) before the paced stream begins
        run.replay(events, rate)
        run.wait_predicted(n_tx, timeout_s, poll_s=0.1)
        run.stop()
    latencies = run.latencies()
    p50, p95, p99 = percentiles(latencies)
    return {"p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "n": len(latencies)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=8_000, help="Transactions replayed.")
    parser.add_argument("--timeout", type=float, default=600, help="Seconds per phase at most.")
    args = parser.parse_args(argv)

    from models.export import export_model
    from models.train import TrainConfig, train_model
    from pipelines.app.simulator import PRESETS, simulate
    from pipelines.core.training_data import training_features

    frame = simulate(PRESETS["small"]).sort_values("TX_DATETIME").head(args.transactions)
    events = replay_events(frame.reset_index(drop=True))
    work = Path(tempfile.mkdtemp(prefix="rillet-bench-"))
    model, _ = train_model(training_features(frame), None, TrainConfig(num_trees=20))
    export_model(model, work / "models", {"purpose": "bench"})

    with LocalRun(work / "state") as bench:
        print(f"{len(events):,} events ({len(frame):,} transactions + labels)", file=sys.stderr)
        ro = read_only(bench.stack, events, work / "models", args.timeout)
        print(f"read-only: {ro:,.0f} events/s", file=sys.stderr)
        fu, corrections = full(bench.stack, events, work / "models", args.timeout)
        print(f"full: {fu:,.0f} events/s ({corrections} corrections)", file=sys.stderr)
        lat = latency(bench.stack, events, work / "models", fu / 2, args.timeout)
        print(f"latency at {fu / 2:,.0f} events/s: {lat}", file=sys.stderr)
    print(
        json.dumps(
            {
                "read_only_eps": round(ro, 1),
                "full_eps": round(fu, 1),
                "ratio": round(fu / ro, 3),
                "p50_ms": round(lat["p50_ms"], 1),
                "p95_ms": round(lat["p95_ms"], 1),
                "p99_ms": round(lat["p99_ms"], 1),
                "latency_rate_eps": round(fu / 2, 1),
                "events": len(events),
                "corrections": corrections,
            }
        )
    )


if __name__ == "__main__":
    # Run through the importable module: Beam pickles functions of __main__ by value, which would
    # give the pipeline its own copy of the in-process counter.
    from bench.e2e import main as _main

    _main()
