"""Reference card-transaction simulator (the workload the product proves itself on).

This regenerates, row for row, the synthetic dataset of the open book *Reproducible Machine
Learning for Credit Card Fraud Detection - Practical Handbook*, following the description in
``docs/specs/reference-workload.md`` section 1 (the book's own code is GPL and is not used).

The published dataset (preset ``"handbook"``: 5,000 customers, 10,000 terminals, 183 days from
2018-04-01, radius 5) has 1,754,155 transactions and 14,681 frauds. Smaller presets exist for demos
and tests. :func:`simulate` returns the labelled transactions as a DataFrame; :func:`write_dataset`
and :func:`read_dataset` store them as two Parquet files, the transaction stream and the label
stream, as the pipeline consumes them.

Reproducing the published rows exactly constrains the implementation:

* Every random draw goes through NumPy's legacy ``RandomState`` algorithms or Python's ``random``
  module (Mersenne Twister), with the seeds and in the order of the spec. We use private generator
  instances (``np.random.RandomState(seed)``, ``random.Random(seed)``) instead of re-seeding the
  global ones: they produce identical streams and leave the caller's global state alone.
* Customer and terminal profiles, usable terminals and the fraud scenarios are vectorised. The
  per-customer transaction draws are not: within a customer the Poisson, normal and uniform draws
  interleave on one stream and consume a data-dependent number of raw doubles, so they run as a
  tight scalar loop (a few seconds for the full dataset). Customers are independent because each
  one re-seeds both generators.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "COLUMNS",
    "LABEL_COLUMNS",
    "PRESETS",
    "TRANSACTION_COLUMNS",
    "SimulatorConfig",
    "read_dataset",
    "simulate",
    "write_dataset",
]

_ScalarT = TypeVar("_ScalarT", bound=np.generic)

SECONDS_PER_DAY = 86_400
# Scenario 2 keeps a terminal compromised for 28 days, scenario 3 a card for 14 days.
_TERMINAL_COMPROMISE_DAYS = 28
_CARD_COMPROMISE_DAYS = 14
_SCENARIO1_AMOUNT = 220.0
_SCENARIO3_FACTOR = 5.0
# Customers per block in the vectorised distance computation (block x n_terminals doubles).
_DISTANCE_BLOCK = 256

TRANSACTION_COLUMNS: tuple[str, ...] = (
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_AMOUNT",
    "TX_TIME_SECONDS",
    "TX_TIME_DAYS",
)
"""Columns of ``transactions.parquet`` (the transaction stream)."""

LABEL_COLUMNS: tuple[str, ...] = (
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_FRAUD",
    "TX_FRAUD_SCENARIO",
)
"""Columns of ``labels.parquet`` (the label stream)."""

COLUMNS: tuple[str, ...] = (*TRANSACTION_COLUMNS, "TX_FRAUD", "TX_FRAUD_SCENARIO")
"""Columns of the frame returned by :func:`simulate`, in order."""

_DATETIME_DTYPE = pd.DatetimeTZDtype(unit="us", tz="UTC")
_DTYPES: dict[str, object] = {
    "TRANSACTION_ID": np.dtype(np.int64),
    "TX_DATETIME": _DATETIME_DTYPE,
    "CUSTOMER_ID": np.dtype(np.int64),
    "TERMINAL_ID": np.dtype(np.int64),
    "TX_AMOUNT": np.dtype(np.float64),
    "TX_TIME_SECONDS": np.dtype(np.int64),
    "TX_TIME_DAYS": np.dtype(np.int64),
    "TX_FRAUD": np.dtype(np.int8),
    "TX_FRAUD_SCENARIO": np.dtype(np.int8),
}


@dataclass(frozen=True)
class SimulatorConfig:
    """Parameters of the reference simulator (defaults = the published dataset).

    ``start_date`` is the time of second 0 (a naive date/time is taken as UTC); ``radius`` is the
    distance below which a terminal is usable by a customer, on the 100 x 100 map.
    """

    n_customers: int = 5000
    n_terminals: int = 10000
    n_days: int = 183
    start_date: str = "2018-04-01"
    radius: float = 5.0


PRESETS: dict[str, SimulatorConfig] = {
    "handbook": SimulatorConfig(),
    "small": SimulatorConfig(n_customers=500, n_terminals=1000, n_days=56),
    "tiny": SimulatorConfig(n_customers=60, n_terminals=120, n_days=21),
}
"""Named configurations: ``handbook`` is the published dataset, the others are for demos/tests."""


def simulate(config: SimulatorConfig) -> pd.DataFrame:
    """Generate the labelled transactions of ``config``.

    Returns one row per transaction, ordered by TRANSACTION_ID, with columns:
    TRANSACTION_ID (int64, 0-based position in the final time order),
    TX_DATETIME (datetime64[us, UTC]),
    CUSTOMER_ID (int64), TERMINAL_ID (int64), TX_AMOUNT (float64, after scenario-3 multiplication),
    TX_TIME_SECONDS (int64, seconds since start), TX_TIME_DAYS (int64, day index),
    TX_FRAUD (int8, 0/1), TX_FRAUD_SCENARIO (int8, 0..3; later scenarios overwrite earlier).

    Raises ``ValueError`` for invalid parameters (the fraud scenarios need at least 3 customers
    and 2 terminals).
    """
    _validate(config)
    start = _start_timestamp(config.start_date)
    customers = _customer_profiles(config.n_customers)
    terminals = _terminal_profiles(config.n_terminals)
    usable = _usable_terminals(customers[:, :2], terminals, config.radius)

    secs_parts: list[npt.NDArray[np.int64]] = []
    amount_parts: list[npt.NDArray[np.float64]] = []
    terminal_parts: list[npt.NDArray[np.int64]] = []
    customer_parts: list[npt.NDArray[np.int64]] = []
    for customer_id in range(config.n_customers):
        if len(usable[customer_id]) == 0:
            # The spec still makes this customer's draws, but records nothing. Every customer
            # re-seeds both generators, so skipping those draws changes no other customer.
            continue
        _, _, mean_amount, mean_tx_per_day = customers[customer_id]
        secs, amounts, terms = _customer_transactions(
            customer_id,
            float(mean_amount),
            float(mean_tx_per_day),
            usable[customer_id],
            config.n_days,
        )
        secs_parts.append(secs)
        amount_parts.append(amounts)
        terminal_parts.append(terms)
        customer_parts.append(np.full(len(secs), customer_id, dtype=np.int64))

    secs_all = _concat(secs_parts, np.int64)
    # Rounding is elementwise, so rounding the concatenation equals np.round on each scalar draw.
    amounts_all = np.round(_concat(amount_parts, np.float64), 2)
    terminals_all = _concat(terminal_parts, np.int64)
    customers_all = _concat(customer_parts, np.int64)

    order = _time_order(secs_all)
    secs_all = secs_all[order]
    amounts_all = amounts_all[order]
    terminals_all = terminals_all[order]
    customers_all = customers_all[order]
    days_all = secs_all // SECONDS_PER_DAY

    fraud, scenario = _add_frauds(
        amounts_all,
        customers_all,
        terminals_all,
        days_all,
        config.n_customers,
        config.n_terminals,
    )

    start_us = np.datetime64(start.tz_localize(None).as_unit("us"), "us")
    datetimes = start_us + secs_all.astype("timedelta64[s]")  # datetime64[us]
    frame = pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(len(secs_all), dtype=np.int64),
            "TX_DATETIME": pd.Series(datetimes).dt.tz_localize("UTC"),
            "CUSTOMER_ID": customers_all,
            "TERMINAL_ID": terminals_all,
            "TX_AMOUNT": amounts_all,
            "TX_TIME_SECONDS": secs_all,
            "TX_TIME_DAYS": days_all,
            "TX_FRAUD": fraud,
            "TX_FRAUD_SCENARIO": scenario,
        }
    )
    return _conform(frame)


def write_dataset(df: pd.DataFrame, output_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Write ``df`` (a :func:`simulate` frame) as two Parquet files.

    ``output_dir/transactions.parquet`` holds TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID,
    TERMINAL_ID, TX_AMOUNT, TX_TIME_SECONDS, TX_TIME_DAYS; ``output_dir/labels.parquet`` holds
    TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_FRAUD, TX_FRAUD_SCENARIO. The
    directory is created if needed. Returns ``{"transactions": path, "labels": path}``.
    """
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = _conform(df.loc[:, list(COLUMNS)])
    paths = {
        "transactions": out / "transactions.parquet",
        "labels": out / "labels.parquet",
    }
    arrays = {column: _to_arrow(frame[column]) for column in COLUMNS}
    for key, columns in (("transactions", TRANSACTION_COLUMNS), ("labels", LABEL_COLUMNS)):
        pq.write_table(pa.table({column: arrays[column] for column in columns}), paths[key])
    return {key: str(path) for key, path in paths.items()}


def read_dataset(input_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Read the two files written by :func:`write_dataset` and join them on TRANSACTION_ID.

    Returns the :func:`simulate` frame (same columns and dtypes, ordered by TRANSACTION_ID).
    Raises ``ValueError`` if the two files do not describe the same transactions.
    """
    base = Path(input_dir)
    transactions = pq.read_table(base / "transactions.parquet").to_pandas()
    labels = pq.read_table(base / "labels.parquet").to_pandas()
    if len(transactions) != len(labels):
        raise ValueError(f"{len(transactions)} transactions but {len(labels)} labels in {base}")
    merged = transactions.merge(
        labels.loc[:, ["TRANSACTION_ID", "TX_FRAUD", "TX_FRAUD_SCENARIO"]],
        on="TRANSACTION_ID",
        how="inner",
        validate="one_to_one",
    )
    if len(merged) != len(transactions):
        raise ValueError(f"transaction ids of the two files in {base} differ")
    merged = merged.sort_values("TRANSACTION_ID", kind="stable")
    return _conform(merged.loc[:, list(COLUMNS)])


# --------------------------------------------------------------------------------------------
# Internals


def _validate(config: SimulatorConfig) -> None:
    if config.n_customers < 3:
        raise ValueError("n_customers must be >= 3 (scenario 3 compromises 3 cards a day)")
    if config.n_terminals < 2:
        raise ValueError("n_terminals must be >= 2 (scenario 2 compromises 2 terminals a day)")
    if config.n_days < 1:
        raise ValueError("n_days must be >= 1")
    if not config.radius > 0:
        raise ValueError("radius must be > 0")


def _start_timestamp(start_date: str) -> pd.Timestamp:
    start = pd.Timestamp(start_date)
    return start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")


def _customer_profiles(n_customers: int) -> npt.NDArray[np.float64]:
    """Rows (x, y, mean_amount, mean_tx_per_day) for customer ids 0..n-1.

    The spec draws four scalar uniforms per customer, in row order. One broadcast draw of shape
    (n, 4) consumes the same doubles in the same (C) order and computes the same
    ``low + (high - low) * u``, so it is bit-identical.
    """
    rs = np.random.RandomState(0)
    low = np.array([0.0, 0.0, 5.0, 0.0])
    high = np.array([100.0, 100.0, 100.0, 4.0])
    return rs.uniform(low, high, size=(n_customers, 4))


def _terminal_profiles(n_terminals: int) -> npt.NDArray[np.float64]:
    """Rows (x, y) for terminal ids 0..m-1 (same argument as for the customers)."""
    rs = np.random.RandomState(1)
    return rs.uniform(0.0, 100.0, size=(n_terminals, 2))


def _usable_terminals(
    customer_xy: npt.NDArray[np.float64],
    terminal_xy: npt.NDArray[np.float64],
    radius: float,
) -> list[npt.NDArray[np.int64]]:
    """For each customer, the ids (increasing) of terminals at distance strictly below radius.

    Computed as sqrt(dx**2 + dy**2) < radius, the same floating-point operations as the spec's
    Euclidean distance, so boundary cases resolve identically; blocks bound memory.
    """
    result: list[npt.NDArray[np.int64]] = []
    tx = terminal_xy[:, 0][None, :]
    ty = terminal_xy[:, 1][None, :]
    for lo in range(0, len(customer_xy), _DISTANCE_BLOCK):
        block = customer_xy[lo : lo + _DISTANCE_BLOCK]
        dx = block[:, 0][:, None] - tx
        dy = block[:, 1][:, None] - ty
        within = np.sqrt(dx * dx + dy * dy) < radius
        rows, cols = np.nonzero(within)  # row-major: terminal ids increase within a row
        bounds = np.searchsorted(rows, np.arange(len(block) + 1))
        result.extend(cols[bounds[i] : bounds[i + 1]].astype(np.int64) for i in range(len(block)))
    return result


def _customer_transactions(
    customer_id: int,
    mean_amount: float,
    mean_tx_per_day: float,
    usable: npt.NDArray[np.int64],
    n_days: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """One customer's transactions: (seconds since start, unrounded amounts, terminal ids).

    Must only be called for a customer with at least one usable terminal (then every kept
    transaction is recorded).
    """
    # Sequential on purpose. The NumPy draws of one customer share a single stream and interleave
    # day by day: Poisson (multiplication method: a variable number of uniforms), then per
    # transaction a normal for the time (polar method, which caches every second value, so
    # normals pair up across transactions and across the Poisson draws in between), and, only if
    # the time is kept, a normal amount and possibly a uniform redraw. Batching any of them would
    # shift the stream.
    rs = np.random.RandomState(customer_id)
    poisson = rs.poisson
    gauss = rs.standard_normal
    uniform = rs.uniform
    std_amount = mean_amount / 2
    secs: list[int] = []
    amounts: list[float] = []
    for day in range(n_days):
        day_start = day * SECONDS_PER_DAY
        for _ in range(poisson(mean_tx_per_day)):
            # normal(loc, scale) is computed by NumPy as loc + scale * gauss(); doing it here
            # avoids the per-call argument conversion and gives the same double.
            s = int(43200.0 + 20000.0 * gauss())  # int() truncates toward zero, as specified
            if 0 < s < SECONDS_PER_DAY:
                amount = mean_amount + std_amount * gauss()
                if amount < 0:
                    amount = uniform(0.0, 2 * mean_amount)
                secs.append(day_start + s)
                amounts.append(amount)
    # Python's random is a separate stream that only the terminal choices use, so they can be
    # made after the NumPy draws without changing either sequence.
    choice = random.Random(customer_id).choice
    candidates = usable.tolist()
    terminals = [choice(candidates) for _ in range(len(secs))]
    return (
        np.asarray(secs, dtype=np.int64),
        np.asarray(amounts, dtype=np.float64),
        np.asarray(terminals, dtype=np.int64),
    )


def _concat(parts: Sequence[npt.NDArray[_ScalarT]], dtype: type[_ScalarT]) -> npt.NDArray[_ScalarT]:
    """Concatenate per-customer arrays (all of ``dtype``); empty when there are none."""
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


def _time_order(secs: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
    """Permutation sorting the customer-order concatenation by time, as the spec prescribes.

    The default argsort ("quicksort") is not stable: transactions sharing a second come out in an
    order that depends on the algorithm, and so do their ids. The published data were ordered by
    NumPy's classic introsort over the timestamps. Recent NumPy builds sort int64/float64 keys with
    SIMD code (x86-simd-sort) on capable CPUs, which breaks ties differently, while datetime64 keys
    still use the classic introsort on every machine. Sorting the seconds viewed as datetime64
    makes the same comparisons as sorting the published timestamps (start + seconds) with that
    introsort, hence the published ids, independent of the hardware.
    """
    return np.argsort(secs.view("datetime64[s]"), kind="quicksort")


def _add_frauds(
    amounts: npt.NDArray[np.float64],
    customers: npt.NDArray[np.int64],
    terminals: npt.NDArray[np.int64],
    days: npt.NDArray[np.int64],
    n_customers: int,
    n_terminals: int,
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.int8]]:
    """Apply fraud scenarios 1, 2, 3 in order; multiplies scenario-3 amounts in place.

    Arrays are in transaction-id order. Returns (TX_FRAUD, TX_FRAUD_SCENARIO).
    """
    n = len(amounts)
    fraud = np.zeros(n, dtype=np.int8)
    scenario = np.zeros(n, dtype=np.int8)

    # Scenario 1, decided on the amounts before any scenario-3 multiplication.
    big = amounts > _SCENARIO1_AMOUNT
    fraud[big] = 1
    scenario[big] = 1

    # Start days D = 0 .. last day index - 1, the last day index being that of the latest
    # transaction (n_days - 1 whenever the last day has a transaction, as in the handbook).
    n_start_days = int(days.max()) if n else 0

    # Scenario 2. Every compromise sets the same codes, so the order of start days does not
    # matter and the union can be computed at once: a transaction (terminal, day) is hit when its
    # terminal has a start day D with day - 28 < D <= day. Keys terminal * stride + D are sorted;
    # the largest key <= terminal * stride + day is that terminal's latest D <= day (the stride
    # leaves a gap so the window never reaches a previous terminal's keys).
    if n_start_days > 0:
        stride = n_start_days + _TERMINAL_COMPROMISE_DAYS + 1
        keys = np.concatenate(
            [
                np.random.RandomState(d).choice(n_terminals, 2, replace=False).astype(np.int64)
                * stride
                + d
                for d in range(n_start_days)
            ]
        )
        keys.sort()
        query = terminals * stride + days
        pos = np.searchsorted(keys, query, side="right") - 1
        hit = pos >= 0
        hit[hit] = keys[pos[hit]] > query[hit] - _TERMINAL_COMPROMISE_DAYS
        fraud[hit] = 1
        scenario[hit] = 2

    # Scenario 3, sequential over start days: each day's pick depends on the list built that day
    # and amounts may be multiplied again on a later day. The ids of one customer are grouped
    # (stable sort, so increasing) and their days are non-decreasing, because ids follow time;
    # a 14-day window is therefore a contiguous slice found by binary search.
    if n_start_days > 0:
        by_customer = np.argsort(customers, kind="stable")
        offsets = np.zeros(n_customers + 1, dtype=np.int64)
        np.cumsum(np.bincount(customers, minlength=n_customers), out=offsets[1:])
        days_by_customer = days[by_customer]
        for d in range(n_start_days):
            picked_customers = np.random.RandomState(d).choice(n_customers, 3, replace=False)
            slices = []
            for c in picked_customers:
                lo, hi = int(offsets[c]), int(offsets[c + 1])
                first, end = np.searchsorted(
                    days_by_customer[lo:hi], [d, d + _CARD_COMPROMISE_DAYS], side="left"
                )
                slices.append(by_customer[lo + first : lo + end])
            ids = np.sort(np.concatenate(slices)).tolist()
            # random.seed(d) then random.sample(ids, k=int(len(ids) / 3)), on a private instance
            # seeded identically. sample() returns distinct ids, so the fancy-indexed update
            # below multiplies each picked amount exactly once for this day.
            chosen = np.asarray(random.Random(d).sample(ids, k=len(ids) // 3), dtype=np.int64)
            amounts[chosen] = amounts[chosen] * _SCENARIO3_FACTOR
            fraud[chosen] = 1
            scenario[chosen] = 3
    return fraud, scenario


def _to_arrow(series: pd.Series) -> pa.Array:
    """Column to Arrow; times become timestamp[us, tz=UTC].

    Built from NumPy arrays rather than with ``pa.Table.from_pandas``, which goes through the
    deprecated tz-dropping ``Series.values`` on current pandas.
    """
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        values = series.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[us]")
        return pa.array(values, type=pa.timestamp("us", tz="UTC"))
    return pa.array(series.to_numpy())


def _conform(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns in the canonical order with the canonical dtypes, and a fresh RangeIndex."""
    out = frame.loc[:, list(COLUMNS)].reset_index(drop=True)
    for column, dtype in _DTYPES.items():
        if out[column].dtype != dtype:
            out[column] = out[column].astype(dtype)
    return out
