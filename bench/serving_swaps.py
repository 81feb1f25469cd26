"""``make bench-swaps``: what a model swap costs the thread that scores (issue 21, item 8).

One process as a local job's: TensorFlow, ydf-tf, Beam and the job's modules imported; the job's
ServingModels (``pipelines/transforms/model_serving.py``) following a registry of four real
versions (YDF trees exported as the trainer exports them, trained once on the ``tiny`` preset
into the work directory), with its watcher thread polling every ``--poll-s``; a scoring thread
standing for the local runner's one thread: every 50 ms it scores a batch of 20 transactions
(400/s) through RegistryModelHandler.run_inference and keeps the newest ``--retained``
transactions (the job's caches: objects that the collector scans). After a baseline without
swaps, the registry is promoted ``--swaps`` times (each swap loads one version and unloads one),
waiting for each to be served.

Figures (the last stdout line, one JSON object):

- refresh_ms: the watcher's refresh() that switched (read the pointer, load, switch, unload):
  median and max;
- stall_ms: per batch, how late it finished against its 50 ms slot; p50, p99 and max, during
  the baseline and during the swaps (a stop-the-world collection shows here: it holds the GIL);
- gc: the collector's pauses timed with ``gc.callbacks``, per generation: count, max and total
  ms, during the baseline and during the swaps;
- memory: RSS (MB) after the first and the last swap, its growth per swap over the second half
  of the swaps (a version that is never freed shows as growth), and the objects the collector
  tracks (``gc.get_objects``) and holds frozen (``gc.get_freeze_count``) at the end.

It reads only the serving API that existed before this measurement's change (ServingModels,
load_version, RegistryModelHandler, ModelRegistry), so the same file measures an older checkout:
``PYTHONPATH=<checkout> python bench/serving_swaps.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

VERSIONS = tuple(f"2026010{i}T000000000000Z" for i in range(1, 5))
BATCH = 20
SLOT_S = 0.05  # one batch of 20 every 50 ms: 400 transactions/s, the demo's rate


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20


def make_versions(model_dir: Path) -> None:
    """Four versions (different seeds) in ``model_dir``, trained once."""
    from models.export import export_model
    from models.train import TrainConfig, train_model
    from pipelines.app.simulator import PRESETS, simulate
    from pipelines.core.training_data import training_features
    from pipelines.stores.model_registry import ModelRegistry

    missing = [v for v in VERSIONS if not (model_dir / v / "model_card.json").exists()]
    if not missing:
        return
    features = training_features(simulate(PRESETS["tiny"]))
    for version in missing:
        seed = VERSIONS.index(version) + 1
        # The demo's model: YDF gradient boosted trees, depth 4, 100 trees (models.selection).
        model, _ = train_model(features, None, TrainConfig(max_depth=4, num_trees=100, seed=seed))
        export_model(model, model_dir, {"purpose": "bench-swaps"}, version=version)
    ModelRegistry(str(model_dir)).promote(VERSIONS[0], challenger=VERSIONS[1])


class GcClock:
    """Every collection's generation and pause, from gc.callbacks: wall time (what the other
    threads wait, the GIL being held) and the collecting thread's CPU time (the same figure
    without the time the machine gave to other processes)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, int, float, float]] = []  # (start, generation, ms, cpu)
        self._started = (0.0, 0.0)

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = (time.perf_counter(), time.thread_time())
        else:
            wall, cpu = self._started
            self.pauses.append(
                (
                    wall,
                    info["generation"],
                    (time.perf_counter() - wall) * 1e3,
                    (time.thread_time() - cpu) * 1e3,
                )
            )

    def summary(self, start: float, end: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for generation in (0, 1, 2):
            pauses = [p for p in self.pauses if p[1] == generation and start <= p[0] < end]
            out[f"gen{generation}"] = {
                "n": len(pauses),
                "max_ms": round(max(p[2] for p in pauses), 1) if pauses else 0.0,
                "total_ms": round(sum(p[2] for p in pauses), 1),
                "max_cpu_ms": round(max(p[3] for p in pauses), 1) if pauses else 0.0,
                "total_cpu_ms": round(sum(p[3] for p in pauses), 1),
            }
        return out


def stall_summary(stalls: list[tuple[float, float]], start: float, end: float) -> dict[str, Any]:
    ms = sorted(s for t, s in stalls if start <= t < end)
    if not ms:
        return {"batches": 0}
    return {
        "batches": len(ms),
        "p50_ms": round(ms[len(ms) // 2], 1),
        "p99_ms": round(ms[int(len(ms) * 0.99)], 1),
        "max_ms": round(ms[-1], 1),
    }


def run(work_dir: Path, swaps: int, swap_every_s: float, poll_s: float, retained: int) -> dict:
    import apache_beam  # noqa: F401  (the job's runtime, as in the job's process)
    import tensorflow  # noqa: F401
    import ydf_tf  # noqa: F401

    import pipelines.streaming  # noqa: F401
    from pipelines.core.batches import FeatureBatch
    from pipelines.core.definitions import MODEL_INPUTS
    from pipelines.core.schema import Transaction
    from pipelines.stores.model_registry import ModelRegistry
    from pipelines.transforms.inference import RegistryModelHandler, ServingConfig, resolve_model
    from pipelines.transforms.model_serving import Assignment, ServingModels, load_version

    load_at_start = os.getloadavg()[0]
    model_dir = work_dir / "models"
    make_versions(model_dir)
    registry = ModelRegistry(str(model_dir))
    if registry.pointer().champion != VERSIONS[0]:
        registry.promote(VERSIONS[0], challenger=VERSIONS[1])
    gc.collect()

    refreshes: list[tuple[float, float]] = []  # (start, ms) of the refreshes that switched

    class TimedServing(ServingModels):
        def refresh(self) -> bool:
            started = time.perf_counter()
            switched = super().refresh()
            if switched:
                refreshes.append((started, (time.perf_counter() - started) * 1e3))
            return switched

    def source() -> Assignment:
        pointer = ModelRegistry(str(model_dir)).pointer()
        return Assignment(str(pointer.champion), pointer.challenger, pointer.generation)

    def load(version: str) -> Any:
        info = resolve_model(str(model_dir), version)
        return load_version(
            info.version, info.path, info.features, "saved_model", None, MODEL_INPUTS
        )

    clock = GcClock()
    gc.callbacks.append(clock)
    models = TimedServing(source, load, poll_s)
    handler = RegistryModelHandler(ServingConfig(str(model_dir)))
    stop = threading.Event()
    stalls: list[tuple[float, float]] = []  # (slot start, ms late)
    kept: deque[Transaction] = deque(maxlen=retained)
    rng = np.random.default_rng(0)

    def score() -> None:
        slot = time.perf_counter()
        n = 0
        while not stop.is_set():
            txs = [
                Transaction(
                    f"t{n + i}",
                    1_522_540_800_000_000 + n + i,
                    {"customer_id": f"C{i}", "terminal_id": f"T{i}", "amount": 10.0},
                )
                for i in range(BATCH)
            ]
            n += BATCH
            batch = FeatureBatch(
                txs, rng.uniform(0, 3, (BATCH, len(MODEL_INPUTS))), revision=n, names=MODEL_INPUTS
            )
            handler.run_inference(batch, models)
            kept.extend(txs)
            done = time.perf_counter()
            stalls.append((slot, max(0.0, (done - slot - SLOT_S) * 1e3)))
            slot += SLOT_S
            if slot < done:  # behind: the next batch starts now
                slot = done
            time.sleep(max(0.0, slot - time.perf_counter()))

    scorer = threading.Thread(target=score, name="scoring")
    scorer.start()
    time.sleep(10)  # the caches fill: the retained transactions reach --retained
    baseline_start = time.perf_counter()
    time.sleep(20)
    baseline_end = swaps_start = time.perf_counter()
    rss: list[float] = []
    pairs = [(VERSIONS[i % 4], VERSIONS[(i + 1) % 4]) for i in range(1, swaps + 1)]
    for champion, challenger in pairs:
        ModelRegistry(str(model_dir)).promote(champion, challenger=challenger)
        deadline = time.monotonic() + 60
        while models.current().champion.version != champion:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{champion} not served within 60 s")
            time.sleep(0.01)
        time.sleep(swap_every_s)
        rss.append(rss_mb())
    swaps_end = time.perf_counter()
    stop.set()
    scorer.join()
    models.close()
    gc.callbacks.remove(clock)

    half = rss[len(rss) // 2 :]
    slope = float(np.polyfit(np.arange(len(half)), half, 1)[0]) if len(half) > 1 else 0.0
    refresh_ms = [ms for _, ms in refreshes]
    return {
        "load_average_1m": [round(load_at_start, 1), round(os.getloadavg()[0], 1)],
        "swaps": len(refreshes),
        "retained_transactions": retained,
        "refresh_ms": {
            "median": round(statistics.median(refresh_ms), 1),
            "max": round(max(refresh_ms), 1),
        },
        "stall_ms": {
            "baseline": stall_summary(stalls, baseline_start, baseline_end),
            "swaps": stall_summary(stalls, swaps_start, swaps_end),
        },
        "gc": {
            "baseline": clock.summary(baseline_start, baseline_end),
            "swaps": clock.summary(swaps_start, swaps_end),
        },
        "memory": {
            "rss_mb_after_first_swap": round(rss[0], 1),
            "rss_mb_after_last_swap": round(rss[-1], 1),
            "rss_mb_per_swap_second_half": round(slope, 2),
            "tracked_objects": len(gc.get_objects()),
            "frozen_objects": gc.get_freeze_count(),
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving_swaps", description=__doc__)
    parser.add_argument("--work-dir", type=Path, default=Path(".rillet/bench-swaps"))
    parser.add_argument("--swaps", type=int, default=40)
    parser.add_argument("--swap-every-s", type=float, default=1.0)
    parser.add_argument("--poll-s", type=float, default=0.2)
    parser.add_argument("--retained", type=int, default=100_000)
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    result = run(args.work_dir, args.swaps, args.swap_every_s, args.poll_s, args.retained)
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
