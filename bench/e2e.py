"""``make bench-e2e``: the streaming pipeline's throughput against a read-only baseline, and its
latency at half that throughput, on the DirectRunner against the real emulators.

In one run, on the same input (the first N transactions of the small preset and their labels):

  1. read-only: ReadFromPubSub + ParseEvents for both streams, from a backlog;
  2. full: the whole pipeline (features, inference, Datastore, prediction topic), same backlog;
  3. latency: the full pipeline on a fresh store, the same events published at half of (2)'s
     rate; event-to-prediction latency = prediction processing time - Pub/Sub publish time.

Throughput is measured between 10% and 90% of the transactions done (start-up excluded): parsed,
for the read-only pipeline (counted in-process); predicted, for the full pipeline (seen on the
prediction topic). Both pipelines read both streams; events/s counts transactions and labels
(transactions/s x events/transactions). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.app.demo import Monitor, latency_ms, percentiles
from pipelines.app.local import (
    LocalStack,
    Topology,
    create_resources,
    create_subscription,
    environment,
    free_port,
)
from pipelines.app.publisher import publish_events, replay_events
from pipelines.local_runner import tune_direct_runner
from pipelines.options import RilletOptions
from pipelines.stores.bigtable import StoreConfig, create_table
from pipelines.streaming import build_pipeline
from pipelines.transforms.parse import ParseEvents

TOPO = Topology()


_PARSED = [0]
_LOCK = threading.Lock()


def _count(event: Any) -> None:
    with _LOCK:
        _PARSED[0] += 1


def _inputs(tag: str) -> tuple[str, str]:
    """Fresh subscriptions to the two input topics: each phase reads only its own messages."""
    suffix = uuid.uuid4().hex[:6]
    return (
        create_subscription(TOPO.project, f"bench-{tag}-tx-{suffix}", TOPO.transactions_topic),
        create_subscription(TOPO.project, f"bench-{tag}-lb-{suffix}", TOPO.labels_topic),
    )


def _options(tag: str, model_dir: Path, tx_sub: str, label_sub: str) -> PipelineOptions:
    options = PipelineOptions(
        [
            "--runner=DirectRunner",
            f"--project={TOPO.project}",
            f"--model_dir={model_dir}",
            f"--transactions_subscription={tx_sub}",
            f"--labels_subscription={label_sub}",
            f"--bigtable_table=bench_{tag}",
            f"--datastore_kind=Bench{tag.title()}",
        ]
    )
    options.view_as(StandardOptions).streaming = True
    return options


def _watch(progress: Any, total: int, timeout_s: float) -> list[tuple[float, int]]:
    """Samples (time, transactions done) until ``total`` are done."""
    samples = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = progress()
        samples.append((time.monotonic(), done))
        if done >= total:
            return samples
        time.sleep(0.1)
    raise SystemExit(f"timed out: {samples[-1][1]} of {total} transactions after {timeout_s:.0f} s")


def _rate(samples: list[tuple[float, int]], total: int) -> float:
    """Transactions/s between 10% and 90% of the total (interpolated on the samples)."""
    t = np.array([s[0] for s in samples])
    n = np.array([s[1] for s in samples], dtype=float)
    keep = np.concatenate([[True], np.diff(n) > 0])  # np.interp needs increasing x
    t10, t90 = np.interp([0.1 * total, 0.9 * total], n[keep], t[keep])
    return 0.8 * total / max(t90 - t10, 1e-9)


def _predicted(monitor: Monitor) -> Any:
    return lambda: len({b.get("transaction_id") for b in list(monitor.received)})


def read_only(events: list, model_dir: Path, timeout_s: float) -> float:
    subscriptions = _inputs("ro")
    publish_events(events, TOPO.topic_paths(), rate=0)
    p = beam.Pipeline(options=_options("ro", model_dir, *subscriptions))
    for kind, path in zip(("transaction", "label"), subscriptions, strict=True):
        parsed = (
            p
            | f"Read{kind}" >> beam.io.ReadFromPubSub(subscription=path, with_attributes=True)
            | f"Parse{kind}" >> ParseEvents(kind, path)
        )
        if kind == "transaction":
            _ = parsed.valid | "Count" >> beam.Map(_count)
    n_tx = sum(e.topic == "transactions" for e in events)
    _PARSED[0] = 0
    result = p.run()
    try:
        samples = _watch(lambda: _PARSED[0], n_tx, timeout_s)
    finally:
        result.cancel()
    return _rate(samples, n_tx) * len(events) / n_tx


@contextmanager
def _full_pipeline(tag: str, model_dir: Path, backlog: list | None = None) -> Iterator[Monitor]:
    """Runs the full pipeline on a fresh table and subscriptions (``backlog`` published before it
    starts); yields a Monitor of its prediction topic."""
    subscriptions = _inputs(tag)
    out = create_subscription(
        TOPO.project, f"bench-{tag}-out-{uuid.uuid4().hex[:6]}", "predictions"
    )
    if backlog:
        publish_events(backlog, TOPO.topic_paths(), rate=0)
    options = _options(tag, model_dir, *subscriptions)
    create_table(StoreConfig(TOPO.project, TOPO.bigtable_instance, f"bench_{tag}"))
    p = beam.Pipeline(options=options)
    build_pipeline(p, options)
    monitor = Monitor(out)
    thread = threading.Thread(target=monitor.run, daemon=True)
    thread.start()
    result = p.run()
    try:
        yield monitor
    finally:
        result.cancel()
        monitor.stop.set()
        thread.join(timeout=10)


def full(events: list, model_dir: Path, timeout_s: float) -> tuple[float, int]:
    n_tx = sum(e.topic == "transactions" for e in events)
    with _full_pipeline("full", model_dir, backlog=events) as monitor:
        samples = _watch(_predicted(monitor), n_tx, timeout_s)
        time.sleep(2)  # late corrections
    corrections = sum(1 for b in monitor.received if b.get("correction"))
    return _rate(samples, n_tx) * len(events) / n_tx, corrections


def latency(events: list, model_dir: Path, rate: float, timeout_s: float) -> dict[str, float]:
    n_tx = sum(e.topic == "transactions" for e in events)
    with _full_pipeline("latency", model_dir) as monitor:
        time.sleep(5)  # let the pipeline start (model load) before the paced stream begins
        publish_events(events, TOPO.topic_paths(), rate=rate)
        _watch(_predicted(monitor), n_tx, timeout_s)
    originals = [b for b in monitor.received if not b.get("correction")]
    latencies = [x for x in map(latency_ms, originals) if x is not None]
    p50, p95, p99 = percentiles(latencies)
    return {"p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "n": len(latencies)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=8_000, help="Transactions replayed.")
    parser.add_argument("--timeout", type=float, default=600, help="Seconds per phase at most.")
    args = parser.parse_args(argv)

    from models.train import TrainConfig, export_model, train_model
    from pipelines.app.simulator import PRESETS, simulate
    from pipelines.core.training_data import training_features

    tune_direct_runner(RilletOptions().direct_pull_max_messages)
    frame = simulate(PRESETS["small"]).sort_values("TX_DATETIME").head(args.transactions)
    events = replay_events(frame.reset_index(drop=True))
    work = Path(tempfile.mkdtemp(prefix="rillet-bench-"))
    model, _ = train_model(training_features(frame), None, TrainConfig(epochs=1, hidden=(16,)))
    export_model(model, work / "models", {"purpose": "bench"})

    stack = LocalStack(work / "state")
    stack.up({"pubsub": free_port(), "bigtable": free_port(), "datastore": free_port()})
    try:
        with environment(stack.env()):
            create_resources(TOPO)
            print(f"{len(events):,} events ({len(frame):,} transactions + labels)", file=sys.stderr)
            ro = read_only(events, work / "models", args.timeout)
            print(f"read-only: {ro:,.0f} events/s", file=sys.stderr)
            fu, corrections = full(events, work / "models", args.timeout)
            print(f"full: {fu:,.0f} events/s ({corrections} corrections)", file=sys.stderr)
            lat = latency(events, work / "models", fu / 2, args.timeout)
            print(f"latency at {fu / 2:,.0f} events/s: {lat}", file=sys.stderr)
    finally:
        stack.down()
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
