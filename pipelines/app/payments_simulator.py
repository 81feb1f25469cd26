"""The payments workload's simulator: card payments with merchants, categories, countries,
channels and devices, and four fraud scenarios (docs/specs/payments-workload.md).

Its stream is declared by ``pipelines/workloads/payments.yaml``; nothing in the job's layers
knows it. :func:`simulate` returns one row per transaction (the file's field names, plus
``is_fraud`` and ``fraud_scenario``), :func:`write_dataset` stores it in the layout of
``simulator.write_dataset`` (``transactions.parquet`` + ``labels.parquet``, columns named by
the definitions file's fields or their ``column:``), :func:`read_dataset` reads it back, and
:func:`top_k_by_scenario` counts, per scenario, the frauds a model's daily top 100 holds (the
demo's report).

Everything is drawn from one ``numpy.random.SeedSequence(config.seed)``, spawned into one
generator per stage (population, genuine traffic, trips, each scenario), all vectorised: a
change in one stage's draws leaves the others' alone, and the same seed gives the same rows.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.declarations import WORKLOADS, Definitions, load_definitions

__all__ = [
    "DEFINITIONS",
    "PRESETS",
    "SCENARIOS",
    "PaymentsConfig",
    "read_dataset",
    "simulate",
    "summary",
    "top_k_by_scenario",
    "write_dataset",
]

DEFINITIONS = WORKLOADS / "payments.yaml"

SCENARIOS: dict[int, str] = {
    0: "genuine",
    1: "card_testing",
    2: "account_takeover",
    3: "compromised_merchant",
    4: "cross_border_spree",
}
"""``fraud_scenario`` codes (0 = genuine); what each looks like: docs/specs/payments-workload.md."""

# Countries, the first most common among cards and merchants (weights halve every two).
COUNTRIES: tuple[str, ...] = ("FR", "DE", "ES", "IT", "NL", "BE", "GB", "US")
_COUNTRY_WEIGHTS = 0.5 ** (np.arange(len(COUNTRIES)) / 2)

# Merchant categories by channel, with their share of merchants and their amount factor.
_POS_CATEGORIES = {
    "grocery": (0.30, 1.0),
    "fuel": (0.15, 1.2),
    "restaurant": (0.25, 0.8),
    "retail": (0.15, 1.6),
    "travel": (0.05, 4.0),
    "electronics": (0.06, 3.0),
    "jewelry": (0.04, 4.0),
}
_ONLINE_CATEGORIES = {
    "retail": (0.40, 1.5),
    "digital": (0.30, 0.3),
    "electronics": (0.15, 3.0),
    "travel": (0.15, 4.0),
}
_CATEGORIES: tuple[str, ...] = (
    "grocery",
    "fuel",
    "restaurant",
    "retail",
    "travel",
    "electronics",
    "jewelry",
    "digital",
    "cash",
)
_CHANNELS: tuple[str, ...] = ("pos", "online", "atm")
_POS, _ONLINE, _ATM = 0, 1, 2

# Each card shops at a few usual merchants of each channel.
_FAVOURITE_POS = 12
_FAVOURITE_ONLINE = 6
_FAVOURITE_ATM = 2

SECONDS_PER_DAY = 86_400

_COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "tx_time",
    "card_id",
    "card_country",
    "merchant_id",
    "merchant_category",
    "country",
    "channel",
    "device_id",
    "amount",
    "is_fraud",
    "fraud_scenario",
)


@dataclass(frozen=True)
class PaymentsConfig:
    """Parameters of the payments simulator.

    ``start_date`` is the time of second 0 (UTC). Fraud intensities are per 1,000 cards and per
    day (compromises: per 1,000 cards and per week), so a bigger population keeps the same
    fraud mix; ``travel_per_day`` is the genuine trips abroad that make the cross-border
    features imperfect."""

    n_cards: int = 1000
    n_merchants: int = 400
    n_days: int = 56
    start_date: str = "2018-04-01"
    seed: int = 23
    card_tests_per_day: float = 2.0
    takeovers_per_day: float = 2.0
    compromises_per_week: float = 3.0
    sprees_per_day: float = 2.0
    travel_per_day: float = 3.0


PRESETS: dict[str, PaymentsConfig] = {
    # Fewer cards: denser frauds, so that every scenario occurs in three weeks.
    "tiny": PaymentsConfig(
        n_cards=150, n_merchants=100, n_days=21, takeovers_per_day=3.0, compromises_per_week=12.0
    ),
    "small": PaymentsConfig(),
    "large": PaymentsConfig(n_cards=10_000, n_merchants=4000, n_days=183),
}
"""``small`` is the demo's (~58k transactions over 8 weeks, as the handbook's small), ``tiny``
the tests', ``large`` a half-year of 10,000 cards (~1.9M transactions)."""


def simulate(config: PaymentsConfig) -> pd.DataFrame:
    """The labelled transactions of ``config``, ordered by time (``transaction_id`` is the
    position in that order; transactions in the same second keep their generation order).

    Columns: transaction_id, card_id, merchant_id, device_id (int64), tx_time
    (datetime64[us, UTC]), card_country, merchant_category, country, channel (str), amount
    (float64, cents), is_fraud (int8), fraud_scenario (int8, :data:`SCENARIOS`)."""
    _validate(config)
    seeds = np.random.SeedSequence(config.seed).spawn(7)
    world = _World.draw(config, np.random.default_rng(seeds[0]))
    parts = [_genuine(config, world, np.random.default_rng(seeds[1]))]
    _travel(config, world, parts[0], np.random.default_rng(seeds[2]))
    _compromised_merchants(config, world, parts[0], np.random.default_rng(seeds[3]))
    parts.append(_card_testing(config, world, np.random.default_rng(seeds[4])))
    parts.append(_account_takeover(config, world, np.random.default_rng(seeds[5])))
    parts.append(_cross_border_spree(config, world, np.random.default_rng(seeds[6])))

    rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    keep = (rows["second"] >= 0) & (rows["second"] < config.n_days * SECONDS_PER_DAY)
    rows = {k: v[keep] for k, v in rows.items()}
    order = np.argsort(rows["second"], kind="stable")
    rows = {k: v[order] for k, v in rows.items()}

    start = pd.Timestamp(config.start_date)
    start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
    start_us = np.datetime64(start.tz_localize(None).as_unit("us"), "us")
    merchant = rows["merchant"]
    card = rows["card"]
    scenario = rows["scenario"].astype(np.int8)
    frame = pd.DataFrame(
        {
            "transaction_id": np.arange(len(card), dtype=np.int64),
            "tx_time": pd.Series(start_us + rows["second"].astype("timedelta64[s]")).dt.tz_localize(
                "UTC"
            ),
            "card_id": card.astype(np.int64),
            "card_country": np.asarray(COUNTRIES, dtype=object)[world.card_country[card]],
            "merchant_id": merchant.astype(np.int64),
            "merchant_category": np.asarray(_CATEGORIES, dtype=object)[world.category[merchant]],
            "country": np.asarray(COUNTRIES, dtype=object)[rows["country"]],
            "channel": np.asarray(_CHANNELS, dtype=object)[world.channel[merchant]],
            "device_id": rows["device"].astype(np.int64),
            "amount": np.round(rows["amount"], 2),
            "is_fraud": (scenario > 0).astype(np.int8),
            "fraud_scenario": scenario,
        }
    )
    return frame


def write_dataset(
    frame: pd.DataFrame,
    output_dir: str | os.PathLike[str],
    definitions: Definitions | None = None,
) -> dict[str, str]:
    """Write ``frame`` (a :func:`simulate` frame) as ``transactions.parquet`` (the events'
    fields) and ``labels.parquet`` (the labels' fields and ``fraud_scenario``), each column
    named as the definitions file (default: payments.yaml) names its field's dataset column.
    Returns ``{"transactions": path, "labels": path}``."""
    defs = definitions or load_definitions(DEFINITIONS)
    assert defs.labels is not None, "the payments workload has a label stream"
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"transactions": out / "transactions.parquet", "labels": out / "labels.parquet"}
    for key, stream in (("transactions", defs.events), ("labels", defs.labels)):
        arrays = {f.dataset_column: _to_arrow(frame[f.name]) for f in stream.fields}
        if key == "labels":
            arrays["fraud_scenario"] = _to_arrow(frame["fraud_scenario"])
        pq.write_table(pa.table(arrays), paths[key])
    return {key: str(path) for key, path in paths.items()}


def read_dataset(
    input_dir: str | os.PathLike[str], definitions: Definitions | None = None
) -> pd.DataFrame:
    """The :func:`simulate` frame back from the two files :func:`write_dataset` wrote (columns
    by field name, ordered by transaction id). Raises ValueError if the files do not hold the
    same transactions."""
    defs = definitions or load_definitions(DEFINITIONS)
    assert defs.labels is not None, "the payments workload has a label stream"
    base = Path(input_dir)
    frames = []
    for name, stream in (("transactions", defs.events), ("labels", defs.labels)):
        table = pq.read_table(base / f"{name}.parquet").to_pandas()
        frames.append(table.rename(columns={f.dataset_column: f.name for f in stream.fields}))
    transactions, labels = frames
    id_field, label = defs.events.id_field, defs.labels.label_field
    if len(transactions) != len(labels):
        raise ValueError(f"{len(transactions)} transactions but {len(labels)} labels in {base}")
    merged = transactions.merge(
        labels[[defs.labels.id_field, label, "fraud_scenario"]].rename(
            columns={defs.labels.id_field: id_field}
        ),
        on=id_field,
        how="inner",
        validate="one_to_one",
    )
    if len(merged) != len(transactions):
        raise ValueError(f"transaction ids of the two files in {base} differ")
    merged = merged.sort_values(id_field, kind="stable").reset_index(drop=True)
    return merged[list(_COLUMNS)]


def top_k_by_scenario(
    frame: pd.DataFrame,
    score_column: str = "score",
    k: int = 100,
    *,
    time_column: str = "tx_time",
    scenario_column: str = "fraud_scenario",
    card_column: str | None = None,
) -> dict[str, dict[str, int]]:
    """Per fraud scenario, ``{"frauds": n, "in_top": m}``: of its n frauds in ``frame`` (scored
    transactions), m are among the k highest scores of their UTC day (ties: earlier row first).

    With ``card_column``, cards are ranked instead, as Card Precision@k does: each day, one row
    per card (its highest score); n counts the (card, day) pairs with a fraud of the scenario,
    m those among the day's top k cards."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    days = pd.to_datetime(frame[time_column], utc=True).dt.floor("D").to_numpy()
    scores = frame[score_column].to_numpy(dtype=np.float64)
    scenario = frame[scenario_column].to_numpy()
    if card_column is None:
        table = pd.DataFrame({"day": days, "score": scores, "scenario": scenario})
        table["position"] = np.arange(len(table))
        ranked = table.sort_values(["day", "score", "position"], ascending=[True, False, True])
        top = ranked.groupby("day", sort=False).head(k)
        pairs, chosen = table, top
    else:
        table = pd.DataFrame(
            {"day": days, "card": frame[card_column].to_numpy(), "score": scores}
        ).assign(scenario=scenario)
        best = table.groupby(["day", "card"], sort=True)["score"].max().reset_index()
        best["position"] = np.arange(len(best))
        ranked = best.sort_values(["day", "score", "position"], ascending=[True, False, True])
        top_cards = ranked.groupby("day", sort=False).head(k)[["day", "card"]]
        pairs = table[table.scenario > 0][["day", "card", "scenario"]].drop_duplicates()
        chosen = pairs.merge(top_cards, on=["day", "card"])
    out = {}
    for code, name in SCENARIOS.items():
        if code == 0:
            continue
        out[name] = {
            "frauds": int((pairs.scenario == code).sum()),
            "in_top": int((chosen.scenario == code).sum()),
        }
    return out


# --------------------------------------------------------------------------------------------
# Internals

_Rows = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class _World:
    """The population: merchants (channel, category, country, amount factor), cards (home
    country, activity, spend, channel mix, usual merchants, own devices)."""

    channel: npt.NDArray[np.int64]  # per merchant
    category: npt.NDArray[np.int64]
    merchant_country: npt.NDArray[np.int64]
    factor: npt.NDArray[np.float64]
    card_country: npt.NDArray[np.int64]  # per card
    rate: npt.NDArray[np.float64]
    spend: npt.NDArray[np.float64]
    p_online: npt.NDArray[np.float64]
    p_atm: npt.NDArray[np.float64]
    favourite_pos: npt.NDArray[np.int64]  # (cards, _FAVOURITE_POS) merchant ids
    favourite_online: npt.NDArray[np.int64]
    favourite_atm: npt.NDArray[np.int64]
    devices: npt.NDArray[np.int64]  # (cards, 2) the card holder's devices (phone, computer)
    n_cards: int
    n_merchants: int

    @classmethod
    def draw(cls, config: PaymentsConfig, rng: np.random.Generator) -> _World:
        n_m, n_c, n_k = config.n_merchants, config.n_cards, len(COUNTRIES)
        weights = _COUNTRY_WEIGHTS / _COUNTRY_WEIGHTS.sum()
        # 10% ATMs, 20% online shops, the rest shops with a terminal; each country has at least
        # one shop and one ATM so that every card can be served at home and abroad.
        n_atm = max(n_k, n_m // 10)
        n_online = n_m // 5
        channel = np.full(n_m, _POS, dtype=np.int64)
        channel[:n_atm] = _ATM
        channel[n_atm : n_atm + n_online] = _ONLINE
        channel = rng.permutation(channel)
        country = rng.choice(n_k, size=n_m, p=weights)
        for kind in (_POS, _ATM):  # the first merchants of a kind cover every country
            country[np.flatnonzero(channel == kind)[:n_k]] = np.arange(n_k)
        category = np.full(n_m, _CATEGORIES.index("cash"), dtype=np.int64)
        factor = np.ones(n_m)
        for kind, table in ((_POS, _POS_CATEGORIES), (_ONLINE, _ONLINE_CATEGORIES)):
            where = np.flatnonzero(channel == kind)
            names = list(table)
            share = np.array([table[c][0] for c in names])
            picked = rng.choice(len(names), size=len(where), p=share / share.sum())
            category[where] = [_CATEGORIES.index(names[i]) for i in picked]
            factor[where] = np.array([table[c][1] for c in names])[picked]

        card_country = rng.choice(n_k, size=n_c, p=weights)
        rate = rng.uniform(0.2, 1.8, size=n_c)
        spend = np.exp(rng.normal(np.log(30.0), 0.5, size=n_c))
        p_online = rng.uniform(0.05, 0.4, size=n_c)
        p_atm = rng.uniform(0.02, 0.1, size=n_c)
        favourite_pos = _pick(rng, channel == _POS, country, card_country, _FAVOURITE_POS)
        favourite_atm = _pick(rng, channel == _ATM, country, card_country, _FAVOURITE_ATM)
        online = np.flatnonzero(channel == _ONLINE)
        favourite_online = online[rng.integers(0, len(online), size=(n_c, _FAVOURITE_ONLINE))]
        # Device ids: the cards' own devices first, then one terminal per shop or ATM, then the
        # fraudsters' devices (_World.fraud_device), so that no two kinds share an id.
        devices = np.arange(2 * n_c, dtype=np.int64).reshape(n_c, 2)
        return cls(
            channel,
            category,
            country,
            factor,
            card_country,
            rate,
            spend,
            p_online,
            p_atm,
            favourite_pos,
            favourite_online,
            favourite_atm,
            devices,
            n_c,
            n_m,
        )

    def terminal(self, merchant: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return 2 * self.n_cards + merchant

    def fraud_device(self, n: int, offset: int) -> npt.NDArray[np.int64]:
        """``n`` fresh devices; ``offset`` keeps each scenario's range apart."""
        return 2 * self.n_cards + self.n_merchants + offset + np.arange(n, dtype=np.int64)

    def merchants_in(
        self, rng: np.random.Generator, kind: int, country: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        """One merchant of ``kind`` in each given country, uniformly."""
        return _pick(rng, self.channel == kind, self.merchant_country, country, 1)[:, 0]


def _pick(
    rng: np.random.Generator,
    eligible: npt.NDArray[np.bool_],
    merchant_country: npt.NDArray[np.int64],
    country: npt.NDArray[np.int64],
    k: int,
) -> npt.NDArray[np.int64]:
    """For each entry of ``country``, ``k`` eligible merchants of that country (with
    replacement), as a (len(country), k) array: merchants sorted by country, then an offset."""
    ids = np.flatnonzero(eligible)
    ids = ids[np.argsort(merchant_country[ids], kind="stable")]
    counts = np.bincount(merchant_country[ids], minlength=len(COUNTRIES))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    u = rng.random(size=(len(country), k))
    index = starts[country][:, None] + (u * counts[country][:, None]).astype(np.int64)
    return ids[index]


def _validate(config: PaymentsConfig) -> None:
    if config.n_cards < 10:
        raise ValueError("n_cards must be >= 10")
    if config.n_merchants < 5 * len(COUNTRIES):
        raise ValueError(f"n_merchants must be >= {5 * len(COUNTRIES)} (shops in every country)")
    if config.n_days < 1:
        raise ValueError("n_days must be >= 1")


def _seconds_of_day(rng: np.random.Generator, n: int, night_share: float) -> npt.NDArray[Any]:
    """Seconds in a day: most around 14:00 UTC (sd 4 h), ``night_share`` uniform over the day."""
    day = (14 * 3600 + 4 * 3600 * rng.standard_normal(n)).astype(np.int64) % SECONDS_PER_DAY
    anywhen = rng.integers(0, SECONDS_PER_DAY, size=n)
    return np.where(rng.random(n) < night_share, anywhen, day)


def _amounts(
    rng: np.random.Generator, world: _World, card: npt.NDArray[Any], merchant: npt.NDArray[Any]
) -> npt.NDArray[np.float64]:
    """A card's usual spend at a merchant: its spend x the category's factor x a log-normal;
    ATMs give multiples of 20."""
    amount = world.spend[card] * world.factor[merchant] * np.exp(rng.normal(0, 0.6, len(card)))
    cash = world.channel[merchant] == _ATM
    amount[cash] = 20.0 * np.maximum(1, np.round(amount[cash] * 2 / 20.0))
    return np.maximum(np.round(amount, 2), 0.5)


def _rows(
    second: npt.NDArray[Any],
    card: npt.NDArray[Any],
    merchant: npt.NDArray[Any],
    country: npt.NDArray[Any],
    device: npt.NDArray[Any],
    amount: npt.NDArray[Any],
    scenario: int,
) -> _Rows:
    return {
        "second": second.astype(np.int64),
        "card": card.astype(np.int64),
        "merchant": merchant.astype(np.int64),
        "country": country.astype(np.int64),
        "device": device.astype(np.int64),
        "amount": amount.astype(np.float64),
        "scenario": np.full(len(card), scenario, dtype=np.int64),
    }


def _genuine(config: PaymentsConfig, world: _World, rng: np.random.Generator) -> _Rows:
    """Every card's own purchases: Poisson counts, daytime-heavy times, its usual merchants;
    online, from one of its two devices and (mostly) from its home country."""
    counts = rng.poisson(world.rate * config.n_days)
    card = np.repeat(np.arange(world.n_cards), counts)
    n = len(card)
    second = rng.integers(0, config.n_days, size=n) * SECONDS_PER_DAY + _seconds_of_day(
        rng, n, 0.08
    )
    u = rng.random(n)
    kind = np.where(
        u < world.p_online[card],
        _ONLINE,
        np.where(u < world.p_online[card] + world.p_atm[card], _ATM, _POS),
    )
    merchant = np.select(
        [kind == _ONLINE, kind == _ATM],
        [
            world.favourite_online[card, rng.integers(0, _FAVOURITE_ONLINE, n)],
            world.favourite_atm[card, rng.integers(0, _FAVOURITE_ATM, n)],
        ],
        world.favourite_pos[card, rng.integers(0, _FAVOURITE_POS, n)],
    )
    own_device = world.devices[card, (rng.random(n) < 0.3).astype(np.int64)]
    device = np.where(kind == _ONLINE, own_device, world.terminal(merchant))
    # Online, the country is the shopper's (the IP's): home, but 3% elsewhere (VPNs, trips).
    elsewhere = rng.integers(0, len(COUNTRIES), size=n)
    country = np.where(
        kind == _ONLINE,
        np.where(rng.random(n) < 0.03, elsewhere, world.card_country[card]),
        world.merchant_country[merchant],
    )
    return _rows(second, card, merchant, country, device, _amounts(rng, world, card, merchant), 0)


def _per_card(rows: _Rows) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64]]:
    """Row order by (card, time) and each card's first position in it (with a final end)."""
    order = np.lexsort((rows["second"], rows["card"]))
    cards = rows["card"][order]
    bounds = np.searchsorted(cards, np.arange(int(cards.max(initial=0)) + 2))
    return order, bounds


def _travel(config: PaymentsConfig, world: _World, rows: _Rows, rng: np.random.Generator) -> None:
    """Genuine trips abroad: for 2-7 days a card's shop and ATM purchases happen in another
    country (merchants there), so cross-border alone is no proof of fraud."""
    n = rng.poisson(config.travel_per_day * config.n_days * world.n_cards / 1000)
    card = rng.integers(0, world.n_cards, size=n)
    begin = rng.integers(0, config.n_days, size=n) * SECONDS_PER_DAY
    end = begin + rng.integers(2, 8, size=n) * SECONDS_PER_DAY
    abroad = (world.card_country[card] + rng.integers(1, len(COUNTRIES), size=n)) % len(COUNTRIES)
    order, bounds = _per_card(rows)
    times = rows["second"][order]
    for c, lo_t, hi_t, where in zip(card, begin, end, abroad, strict=True):
        lo, hi = bounds[c], bounds[c + 1]
        a, b = lo + np.searchsorted(times[lo:hi], [lo_t, hi_t])
        hit = order[a:b]
        hit = hit[world.channel[rows["merchant"][hit]] != _ONLINE]
        if not len(hit):
            continue
        kinds = world.channel[rows["merchant"][hit]]
        merchant = np.where(
            kinds == _ATM,
            world.merchants_in(rng, _ATM, np.full(len(hit), where)),
            world.merchants_in(rng, _POS, np.full(len(hit), where)),
        )
        rows["merchant"][hit] = merchant
        rows["country"][hit] = where
        rows["device"][hit] = world.terminal(merchant)


def _compromised_merchants(
    config: PaymentsConfig, world: _World, rows: _Rows, rng: np.random.Generator
) -> None:
    """Scenario 3: a shop (a skimmer on its terminal, or a colluding owner) whose card-present
    transactions are fraudulent, 80% of them, for 14 to 28 days; nothing else changes."""
    n = rng.poisson(config.compromises_per_week * config.n_days / 7 * world.n_cards / 1000)
    shops = np.flatnonzero(world.channel == _POS)
    merchant = shops[rng.integers(0, len(shops), size=n)]
    begin = rng.integers(0, config.n_days, size=n) * SECONDS_PER_DAY
    end = begin + rng.integers(14, 29, size=n) * SECONDS_PER_DAY
    hit = np.zeros(len(rows["card"]), dtype=bool)
    order = np.lexsort((rows["second"], rows["merchant"]))
    keys = rows["merchant"][order]
    times = rows["second"][order]
    for m, lo_t, hi_t in zip(merchant, begin, end, strict=True):
        lo, hi = np.searchsorted(keys, [m, m + 1])
        a, b = lo + np.searchsorted(times[lo:hi], [lo_t, hi_t])
        hit[order[a:b]] = True
    hit &= rows["scenario"] == 0
    hit &= rng.random(len(hit)) < 0.8
    rows["scenario"][hit] = 3


def _bursts(
    rng: np.random.Generator, n: int, sizes: npt.NDArray[Any], start: npt.NDArray[Any], gap_s: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``n`` bursts of ``sizes`` events from ``start``, exponential gaps of mean ``gap_s``:
    (burst index per event, its second)."""
    burst = np.repeat(np.arange(n), sizes)
    gaps = rng.exponential(gap_s, size=len(burst))
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    gaps[first] = 0.0  # every burst starts at its start
    cum = np.cumsum(gaps)
    offset = cum - cum[first][burst]
    return burst, start[burst] + offset.astype(np.int64)


def _fraud_starts(config: PaymentsConfig, rng: np.random.Generator, n: int) -> npt.NDArray[Any]:
    """Start seconds of fraud episodes: any day, at any hour (fraudsters keep no office hours)."""
    return rng.integers(0, config.n_days, size=n) * SECONDS_PER_DAY + rng.integers(
        0, SECONDS_PER_DAY, size=n
    )


def _card_testing(config: PaymentsConfig, world: _World, rng: np.random.Generator) -> _Rows:
    """Scenario 1: a stolen card number is tested by a bot: 4-12 online payments of 0.50-4.99
    at as many online shops within minutes, from one new device; 60% of the tested cards are
    then cashed out by one or two large online purchases within about an hour (also fraud)."""
    n = rng.poisson(config.card_tests_per_day * config.n_days * world.n_cards / 1000)
    card = rng.integers(0, world.n_cards, size=n)
    device = world.fraud_device(n, 0)
    ip = rng.integers(0, len(COUNTRIES), size=n)
    sizes = rng.integers(4, 13, size=n)
    burst, second = _bursts(rng, n, sizes, _fraud_starts(config, rng, n), 40.0)
    online = np.flatnonzero(world.channel == _ONLINE)
    merchant = online[rng.integers(0, len(online), size=len(burst))]
    amount = np.round(rng.uniform(0.5, 5.0, size=len(burst)), 2).clip(0.5, 4.99)
    tests = _rows(second, card[burst], merchant, ip[burst], device[burst], amount, 1)

    cashed = np.flatnonzero(rng.random(n) < 0.6)
    sizes = rng.integers(1, 3, size=len(cashed))
    last = np.zeros(n, dtype=np.int64)
    np.maximum.at(last, burst, second)
    b, s = _bursts(
        rng, len(cashed), sizes, last[cashed] + rng.integers(300, 3000, len(cashed)), 600
    )
    wanted = [_CATEGORIES.index(c) for c in ("electronics", "digital")]
    big = online[np.isin(world.category[online], wanted)]
    big = big if len(big) else online
    merchant = big[rng.integers(0, len(big), size=len(b))]
    amount = rng.uniform(200.0, 1500.0, size=len(b))
    owner = cashed[b]
    cash_out = _rows(s, card[owner], merchant, ip[owner], device[owner], amount, 1)
    return {k: np.concatenate([tests[k], cash_out[k]]) for k in tests}


def _account_takeover(config: PaymentsConfig, world: _World, rng: np.random.Generator) -> _Rows:
    """Scenario 2: a fraudster logs into the card holder's wallet from a new device, in another
    country or (40%) behind a proxy in the card's own, and buys 2-6 expensive items (3-10x the
    card's usual spend; electronics, travel, retail) online over a few hours."""
    n = rng.poisson(config.takeovers_per_day * config.n_days * world.n_cards / 1000)
    card = rng.integers(0, world.n_cards, size=n)
    device = world.fraud_device(n, 1_000_000)
    shift = np.where(rng.random(n) < 0.4, 0, rng.integers(1, len(COUNTRIES), size=n))
    abroad = (world.card_country[card] + shift) % len(COUNTRIES)
    sizes = rng.integers(2, 7, size=n)
    burst, second = _bursts(rng, n, sizes, _fraud_starts(config, rng, n), 2700.0)
    online = np.flatnonzero(world.channel == _ONLINE)
    wanted = [_CATEGORIES.index(c) for c in ("electronics", "travel", "retail")]
    shops = online[np.isin(world.category[online], wanted)]
    shops = shops if len(shops) else online
    merchant = shops[rng.integers(0, len(shops), size=len(burst))]
    amount = world.spend[card[burst]] * rng.uniform(3.0, 10.0, size=len(burst))
    return _rows(second, card[burst], merchant, abroad[burst], device[burst], amount, 2)


def _cross_border_spree(config: PaymentsConfig, world: _World, rng: np.random.Generator) -> _Rows:
    """Scenario 4: a skimmed card is cloned and used abroad: 4-12 card-present payments and
    ATM withdrawals in one foreign country over a day or so, at any hour, withdrawals of 200-500
    and purchases of 2-6x the card's usual spend."""
    n = rng.poisson(config.sprees_per_day * config.n_days * world.n_cards / 1000)
    card = rng.integers(0, world.n_cards, size=n)
    abroad = (world.card_country[card] + rng.integers(1, len(COUNTRIES), size=n)) % len(COUNTRIES)
    sizes = rng.integers(4, 13, size=n)
    burst, second = _bursts(rng, n, sizes, _fraud_starts(config, rng, n), 7200.0)
    atm = rng.random(len(burst)) < 0.5
    where = abroad[burst]
    merchant = np.where(
        atm, world.merchants_in(rng, _ATM, where), world.merchants_in(rng, _POS, where)
    )
    amount = np.where(
        atm,
        20.0 * rng.integers(10, 26, size=len(burst)),
        world.spend[card[burst]] * world.factor[merchant] * rng.uniform(2.0, 6.0, len(burst)),
    )
    return _rows(second, card[burst], merchant, where, world.terminal(merchant), amount, 4)


def _to_arrow(series: pd.Series) -> pa.Array:
    """A column to Arrow; times become timestamp[us, tz=UTC]."""
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        values = series.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[us]")
        return pa.array(values, type=pa.timestamp("us", tz="UTC"))
    if series.dtype == object:
        return pa.array(series.to_numpy(), type=pa.string())
    return pa.array(series.to_numpy())


def summary(frame: pd.DataFrame) -> Mapping[str, Any]:
    """Counts of a simulated frame: transactions, frauds and frauds per scenario."""
    codes = frame["fraud_scenario"].to_numpy()
    return {
        "transactions": len(frame),
        "frauds": int(frame["is_fraud"].sum()),
        "scenarios": {name: int((codes == code).sum()) for code, name in SCENARIOS.items() if code},
    }
