"""``make bench-backfill``: the Beam backfill against plain pandas on the full handbook dataset.

In one run, on the same data:

  1. simulate the preset (default ``handbook``: 1,754,155 transactions), write it with
     ``write_dataset`` (transactions.parquet + labels.parquet) to a work directory and read those
     files back with ``read_dataset`` for the pandas runs (timed apart: ``read_s``);
  2. time the Beam backfill (``pipelines.backfill.backfill.run_backfill``, DirectRunner unless
     ``--beam-args`` say otherwise) from the files to its Parquet feature table;
  3. time the pandas baseline (bench.pandas_features) on the frame: ``method="apply"``
     (per-group apply, the usual way; ``pandas_s``) and ``method="vectorised"`` (groupby-rolling;
     ``pandas_vectorised_s``);
  4. check that every variant agrees with the Beam table on the 14 engineered inputs (same
     transaction ids, max abs diff <= 1e-9).

The Beam time includes reading the input files and writing the feature table; the pandas times
exclude reading and writing, so the speedups are conservative. With ``--repeat N`` the
implementations run N times, interleaved, and the fastest run of each counts (the machine may be
shared). CPU seconds are reported next to wall seconds: they move less with other processes'
load. The last stdout line is one JSON object: rows, beam_s, pandas_s, speedup
(pandas_s / beam_s), max_abs_diff, and extras. The exit status is 1 when the outputs disagree,
0 otherwise (the speedup is reported, not enforced). Progress goes to stderr.

    python -m bench.backfill [--preset handbook] [--work-dir DIR] [--skip-apply] [--repeat 1]
                             [--beam-args="--direct_num_workers=2 --shards=8"]

(``--beam-args`` takes one string; write it with ``=`` since its value starts with ``--``.)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.pandas_features import ENGINEERED_FEATURES, Method, pandas_features

__all__ = ["TOLERANCE", "compare", "main", "run_bench"]

TOLERANCE = 1e-9
"""Largest accepted absolute difference between the Beam and pandas features."""

Backfill = Callable[[str, str, Sequence[str]], Path]


def _log(message: str) -> None:
    print(f"[bench-backfill] {message}", file=sys.stderr, flush=True)


def _beam_backfill(input_dir: str, output_dir: str, pipeline_args: Sequence[str] = ()) -> Path:
    # Imported here: the bench module must load (and its comparison be testable) on its own.
    from pipelines.backfill.backfill import run_backfill

    return Path(run_backfill(input_dir, output_dir, list(pipeline_args)))


def compare(beam: pd.DataFrame, pandas: pd.DataFrame) -> tuple[float, dict[str, float]]:
    """Max abs difference of the engineered features of two tables, overall and per column.

    Both need TRANSACTION_ID and :data:`ENGINEERED_FEATURES`; rows are matched by id (any
    order). Raises ``ValueError`` if the ids differ or repeat. A NaN on either side (but not
    both) counts as an infinite difference.
    """
    left = beam.set_index("TRANSACTION_ID").sort_index()
    right = pandas.set_index("TRANSACTION_ID").sort_index()
    if not left.index.is_unique or not right.index.is_unique:
        raise ValueError("duplicate TRANSACTION_IDs")
    if len(left) != len(right) or not left.index.equals(right.index):
        missing = right.index.difference(left.index)
        extra = left.index.difference(right.index)
        raise ValueError(
            f"the tables hold different transactions: {len(left)} vs {len(right)} rows, "
            f"{len(missing)} missing (e.g. {list(missing[:3])}), {len(extra)} extra "
            f"(e.g. {list(extra[:3])})"
        )
    per_column: dict[str, float] = {}
    for column in ENGINEERED_FEATURES:
        a = left[column].to_numpy(np.float64)
        b = right[column].to_numpy(np.float64)
        diff = np.abs(a - b)
        diff[np.isnan(a) & np.isnan(b)] = 0.0
        diff[np.isnan(diff)] = np.inf
        per_column[column] = float(diff.max()) if len(diff) else 0.0
    return max(per_column.values(), default=0.0), per_column


@dataclass
class _Timing:
    """Wall and CPU seconds of one measured call (CPU: this process and its reaped children)."""

    wall: float
    cpu: float


def _cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _timed(label: str, function: Callable[[], Any]) -> tuple[Any, _Timing]:
    gc.collect()
    _log(f"{label} ...")
    cpu = _cpu_seconds()
    start = time.perf_counter()
    result = function()
    timing = _Timing(time.perf_counter() - start, _cpu_seconds() - cpu)
    _log(f"{label}: {timing.wall:.2f} s (cpu {timing.cpu:.2f} s)")
    return result, timing


def _best(timings: list[_Timing]) -> _Timing | None:
    """The fastest run (the least disturbed one on a shared machine)."""
    return min(timings, key=lambda t: t.wall) if timings else None


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 2)


def run_bench(
    preset: str = "handbook",
    work_dir: str | os.PathLike[str] | None = None,
    skip_apply: bool = False,
    beam_args: Sequence[str] = (),
    repeat: int = 1,
    backfill: Backfill = _beam_backfill,
) -> dict[str, Any]:
    """Runs the bench (module docstring) in ``work_dir`` and returns the result as a dict.

    ``work_dir`` defaults to a temporary directory, removed afterwards; a given one is kept
    (input/ and output/ inside it). Each implementation runs ``repeat`` times, interleaved
    (Beam, vectorised, apply, Beam, ...), and the fastest run of each is reported; the outputs
    of the first round are compared. ``backfill`` is the pipeline under test (default: the Beam
    backfill), called as ``backfill(input_dir, output_dir, beam_args)`` and returning a path that
    ``pandas.read_parquet`` reads.
    """
    from pipelines.app.simulator import PRESETS, read_dataset, simulate, write_dataset

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; one of {sorted(PRESETS)}")
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    methods: tuple[Method, ...] = ("vectorised",) if skip_apply else ("vectorised", "apply")
    temporary = work_dir is None
    base = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="rillet-bf-"))
    input_dir, output_dir = base / "input", base / "output"
    if output_dir.exists():
        shutil.rmtree(output_dir)  # a stale table from an earlier run would be read back
    timings: dict[str, list[_Timing]] = {"beam": [], "apply": [], "vectorised": []}
    diffs: dict[str, float | None] = {"apply": None, "vectorised": None}
    errors: list[str] = []
    try:
        frame, simulated = _timed(f"simulate {preset}", partial(simulate, PRESETS[preset]))
        _, written = _timed("write_dataset", partial(write_dataset, frame, input_dir))
        rows = len(frame)
        del frame  # the pandas runs read the written files back, like the backfill
        data, read = _timed("read_dataset", partial(read_dataset, input_dir))

        for round_ in range(repeat):
            out = output_dir if repeat == 1 else output_dir / f"run-{round_}"
            run = partial(backfill, str(input_dir), str(out), list(beam_args))
            table_path, timing = _timed(f"Beam backfill ({round_ + 1}/{repeat})", run)
            timings["beam"].append(timing)
            if round_ == 0:
                beam = pd.read_parquet(table_path)
                _log(f"feature table {table_path}: {len(beam)} rows")
            for method in methods:
                compute = partial(pandas_features, data, method=method)
                table, timing = _timed(f"pandas {method} ({round_ + 1}/{repeat})", compute)
                timings[method].append(timing)
                if round_ == 0:
                    diffs[method] = _check(method, beam, table, errors)
                del table
    finally:
        if temporary:
            shutil.rmtree(base, ignore_errors=True)

    measured = [d for d in diffs.values() if d is not None]
    max_abs_diff = max(measured) if measured and not errors else None
    best = {name: _best(runs) for name, runs in timings.items()}
    beam_s = best["beam"].wall if best["beam"] else None
    apply_s = best["apply"].wall if best["apply"] else None
    vectorised_s = best["vectorised"].wall if best["vectorised"] else None
    result: dict[str, Any] = {
        "rows": rows,
        "beam_s": _round(beam_s),
        "pandas_s": _round(apply_s),
        "speedup": _ratio(apply_s, beam_s),
        "max_abs_diff": max_abs_diff,
        "agree": max_abs_diff is not None and len(beam) == rows and max_abs_diff <= TOLERANCE,
        "pandas_vectorised_s": _round(vectorised_s),
        "speedup_vs_vectorised": _ratio(vectorised_s, beam_s),
        "max_abs_diff_apply": diffs["apply"],
        "max_abs_diff_vectorised": diffs["vectorised"],
        "beam_cpu_s": _round(best["beam"].cpu if best["beam"] else None),
        "pandas_cpu_s": _round(best["apply"].cpu if best["apply"] else None),
        "pandas_vectorised_cpu_s": _round(best["vectorised"].cpu if best["vectorised"] else None),
        "beam_rows": len(beam),
        "read_s": _round(read.wall),
        "simulate_s": _round(simulated.wall),
        "write_s": _round(written.wall),
        "repeat": repeat,
        "preset": preset,
        "beam_args": list(beam_args),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if repeat > 1:
        for name, runs in timings.items():
            if runs:
                result[f"{name}_runs_s"] = [_round(t.wall) for t in runs]
    if errors:
        result["errors"] = errors
    return result


def _check(
    method: str, beam: pd.DataFrame, result: pd.DataFrame, errors: list[str]
) -> float | None:
    """Compares one pandas variant with the Beam table; logs, and records any failure."""
    try:
        diff, per_column = compare(beam, result)
    except ValueError as exc:
        errors.append(f"{method}: {exc}")
        _log(f"pandas {method} vs Beam: {exc}")
        return None
    worst = max(per_column, key=per_column.__getitem__)
    _log(f"pandas {method} vs Beam: max abs diff {diff:.3e} (worst: {worst})")
    if not math.isfinite(diff):
        errors.append(f"{method}: NaN where the other side has a value")
        return None
    return diff


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.backfill",
        description="Beam backfill vs pandas on the same data; the last stdout line is JSON.",
    )
    parser.add_argument("--preset", default="handbook", help="simulator preset (handbook)")
    parser.add_argument(
        "--work-dir", default=None, help="keep the input and output here (default: a temp dir)"
    )
    parser.add_argument(
        "--skip-apply",
        action="store_true",
        help="skip the slow per-group apply variant (pandas_s and speedup are then null)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each implementation, interleaved; the fastest is reported (1)",
    )
    parser.add_argument(
        "--beam-args",
        default="",
        help='extra backfill pipeline arguments as one string, given with "=", e.g. '
        '--beam-args="--shards=2 --direct_num_workers=2"',
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    result = run_bench(
        preset=args.preset,
        work_dir=args.work_dir,
        skip_apply=args.skip_apply,
        beam_args=shlex.split(args.beam_args),
        repeat=args.repeat,
    )
    print(json.dumps(result), flush=True)
    return 0 if result["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
