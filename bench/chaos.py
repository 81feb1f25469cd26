"""make chaos: the full pipeline on the emulators through crashes, bad input and outages, checked.

One run:
  1. a private emulator stack on free ports; input subscriptions retain acknowledged messages;
  2. a simulated dataset: its first ``warm_days`` days are backfilled into the feature store
     (LocalRun.warm_store: the store a job that had streamed them would have left), and the replay
     is the ``min_transactions`` transactions that follow, with their labels. The terminal
     features read windows ending 7 days (the label delay) before each transaction, and their
     risk counts labels: without the warm store a replay shorter than that delay would leave them
     all 0, and the comparison with the batch computation could not see the terminal stage. A
     model is trained on the warm-up days (any model serves: this run checks delivery, not
     accuracy);
  3. the streaming job (DirectRunner, ``--recovery_checkpoint``) fed the replay in event-time order
     at ``rate`` messages/s, mixed with malformed messages of every kind the parser rejects,
     duplicate transactions and labels (exact copies and conflicting ones, published as new
     messages), labels of transactions that never come, and labels contradicting their transaction;
  4. meanwhile: SIGKILL of the job at ``kills`` random moments, each followed by a restart that
     resumes from the checkpoint; the Bigtable and the Datastore emulators stopped (SIGSTOP) for
     ``outage_s`` each; optionally a burst at twice the rate, or ``overload_rate`` (overload).
     The faults are timed from the job's first prediction to the last transaction (what comes
     after is labels only, which predict nothing), and each waits until the job has predicted
     again since the previous one ended, so every fault hits a job at work; for each
     the report records what the job did (``faults``): the predictions before it, none while a
     store was stopped, the time to the next prediction afterwards, and the retries the job
     logged meanwhile (pipelines.stores.retry's warnings in its log);
  5. then every store is checked: one Datastore entity per valid transaction, with exactly the
     features a batch recomputation gives (pipelines.core.training_data); every valid transaction
     and label in Bigtable's id index; every rejected message on the dead-letter topic, no valid
     one.

Last line of output: JSON with sent, valid, malformed, predictions_stored, lost, duplicated,
dead_lettered, kills, outages, feature_mismatches, risk_features_nonzero_share (the stored
predictions with a non-zero terminal risk feature, of those compared) and details. Exit status 1
unless lost = 0, duplicated = 0, dead_lettered = malformed (the same messages),
feature_mismatches = 0 and risk_features_nonzero_share >= ``min_risk_share`` (2%).
"""

from __future__ import annotations

import argparse
import bisect
import functools
import json
import random
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.definitions import FEATURES, MODEL_INPUTS, WindowFeature
from pipelines.stores import retry


@dataclass
class ChaosConfig:
    """What one chaos run does (defaults: the issue's targets)."""

    work_dir: Path = Path(".rillet/chaos")
    preset: str = "small"
    # Days of the dataset backfilled into the store before the replay, which starts right after
    # them (0: no warm store, the replay starts with the dataset). 30 days: the small preset's
    # terminal risk features are non-zero for ~40% of the transactions that follow.
    warm_days: int = 30
    min_transactions: int = 20_000
    min_risk_share: float = 0.02  # of the compared predictions, with a non-zero risk feature
    malformed: int = 1_000  # rejected by the parser
    duplicates: int = 300  # second messages reusing a transaction or label id
    unknown_labels: int = 100  # labels of transactions that never come
    mismatched_labels: int = 50  # labels contradicting their transaction
    kills: int = 3
    outage_s: float = 15.0
    outages: tuple[str, ...] = ("bigtable", "datastore")
    overload_s: float = 0.0  # seconds of burst (0: none)
    overload_at_s: float = 60.0  # when the burst starts, after the first message
    overload_rate: float = 0.0  # messages per second during the burst (0: twice ``rate``)
    rate: float = 400.0
    label_wait_s: float = 20.0
    max_in_flight: int = 5_000
    seed: int = 7
    timeout_s: float = 1_500.0


@dataclass
class Message:
    """One message to publish, and what it is."""

    topic: str  # "transactions" or "labels"
    data: bytes
    kind: str  # "transaction", "label" or a rejection: "malformed", "duplicate", ...
    transaction_id: str = ""
    message_id: str = ""


@dataclass
class Fault:
    """What one fault did to the job (times in seconds after the first message)."""

    what: str  # "kill", or the store stopped: "bigtable", "datastore"
    at_s: float
    predictions_before: int  # prediction messages received when it struck
    # Outages: prediction messages received from STALL_GRACE_S after the pause to the resume
    # (what was already past the stopped store may still come out just after the pause).
    predictions_while_down: int | None = None
    resumed_after_s: float | None = None  # from its end (the resume, the restart) to the next
    retries: list[str] = field(default_factory=list)  # "<call>: <exception>", logged meanwhile


STALL_GRACE_S = 5.0
RESUME_TIMEOUT_S = 120.0  # how long a fault waits for the job to predict again afterwards
# The warnings of with_backoff, by the logger's name (the module's, whatever its path).
_RETRY_LINE = re.compile(
    rf" {re.escape(retry.__name__)} (.+?) failed \((\w+): .*?; retry \d+ in ", re.DOTALL
)


def logged_retries(log: Path) -> list[str]:
    """The retries the job has logged so far, in order, as "<call>: <exception type>" (the
    warnings of pipelines.stores.retry.with_backoff; the log is appended to across restarts)."""
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [f"{m[1]}: {m[2]}" for m in _RETRY_LINE.finditer(text)]


@dataclass
class Chaos:
    """What happened during the run (for the report)."""

    kills: list[float] = field(default_factory=list)
    outages: list[tuple[str, float, float]] = field(default_factory=list)
    first_prediction_s: float | None = None
    faults: list[Fault] = field(default_factory=list)
    burst: tuple[float, float, float] | None = None  # overload: start s, end s, rate msg/s
    warm_store_s: float = 0.0  # the backfill of the warm-up days into the store
    # (seconds, transactions published, transactions predicted, job RSS MB), every ~2 s
    timeline: list[tuple[float, int, int, float]] = field(default_factory=list)


def _rejected(m: Message) -> bool:
    """Whether the pipeline must dead-letter this message (everything but the valid replay)."""
    return m.kind not in ("transaction", "label")


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def malformed_bodies(good: dict[str, Any], n: int) -> list[bytes]:
    """n messages the parser must reject, cycling through every kind of bad input."""
    big = "x" * 5000
    makers: list[Callable[[int], bytes]] = [
        lambda i: b"not json " + str(i).encode(),
        lambda i: b"\x80\x04\x95pickle" + str(i).encode(),  # a pickle: never unpickled
        lambda i: _dumps({**good, "transaction_id": f"bad-{i}", "amount": "12.5"}),
        lambda i: _dumps({**good, "transaction_id": f"bad-{i}", "amount": True}),
        lambda i: _dumps({k: v for k, v in good.items() if k != "terminal_id"}),
        lambda i: _dumps({**good, "transaction_id": f"bad-{i}", "coupon": "FREE"}),
        lambda i: _dumps({**good, "transaction_id": f"bad-{i}", "schema_version": 99}),
        lambda i: _dumps({**good, "transaction_id": f"bad-{i}", "amount": -3.5}),
        lambda i: (
            b'{"schema_version":1,"transaction_id":"bad-%d","tx_datetime":"2018-04-02T10:00:00Z",'
            b'"customer_id":"1","terminal_id":"1","amount":NaN}' % i
        ),
        lambda i: (
            b'{"schema_version":1,"transaction_id":"bad-%d","tx_datetime":"2018-04-02T10:00:00Z",'
            b'"customer_id":"1","terminal_id":"1","amount":Infinity}' % i
        ),
        lambda i: _dumps(
            {**good, "transaction_id": f"bad-{i}", "tx_datetime": "2099-01-01T00:00:00Z"}
        ),
        lambda i: _dumps(
            {**good, "transaction_id": f"bad-{i}", "tx_datetime": "1900-01-01T00:00:00Z"}
        ),
        lambda i: _dumps({**good, "transaction_id": f"bad-{i}", "tx_datetime": "yesterday"}),
        lambda i: _dumps({**good, "transaction_id": f"bad {i}/x"}),
        lambda i: _dumps({**good, "transaction_id": f"bad-{i}", "customer_id": big}),
        lambda i: b"[" * 10_000,
        lambda i: b" \t\n",  # (Pub/Sub itself refuses an empty message)
    ]
    return [makers[i % len(makers)](i) for i in range(n)]


def build_messages(frame: Any, config: ChaosConfig) -> list[Message]:
    """The valid replay in event-time order, with every kind of rejection mixed in."""
    from pipelines.app.publisher import replay_events

    rng = random.Random(config.seed)
    events = replay_events(frame)
    messages = [
        Message(
            e.topic,
            e.data,
            "transaction" if e.topic == "transactions" else "label",
            json.loads(e.data)["transaction_id"],
        )
        for e in events
    ]
    tx_positions = [i for i, m in enumerate(messages) if m.kind == "transaction"]
    label_positions = [i for i, m in enumerate(messages) if m.kind == "label"]
    good = json.loads(messages[tx_positions[0]].data)
    inserts: list[tuple[int, Message]] = []
    for body in malformed_bodies(good, config.malformed):
        topic = rng.choice(["transactions", "labels"])
        inserts.append((rng.randrange(len(messages)), Message(topic, body, "malformed")))
    # Duplicates: published well after the original (2,000 messages later or more), so the
    # original is the first message with its id.
    gap = 2_000
    early = {  # originals from the first two thirds, so their copies fit in the replay
        kind: positions[: len(positions) * 2 // 3] or positions
        for kind, positions in (("label", label_positions), ("transaction", tx_positions))
    }
    for k in range(config.duplicates):
        on_label = k % 3 == 2
        pos = rng.choice(early["label" if on_label else "transaction"])
        original = messages[pos]
        body = json.loads(original.data)
        if k % 2:  # a conflicting duplicate: same id, different content
            if on_label:
                body["is_fraud"] = 1 - body["is_fraud"]
            else:
                body["amount"] = round(body["amount"] + 1.0, 2)
        where = min(len(messages), pos + gap + rng.randrange(gap))
        inserts.append(
            (where, Message(original.topic, _dumps(body), "duplicate", original.transaction_id))
        )
    for k in range(config.unknown_labels):
        body = json.loads(messages[rng.choice(label_positions)].data)
        body["transaction_id"] = f"ghost-{k}"
        inserts.append((rng.randrange(len(messages)), Message("labels", _dumps(body), "unknown")))
    for _ in range(config.mismatched_labels):
        pos = rng.choice(tx_positions[: len(tx_positions) // 2])
        body = json.loads(messages[pos].data)
        del body["amount"]
        body["is_fraud"] = 0
        body["terminal_id"] = body["terminal_id"] + "-elsewhere"
        # Before the genuine label (7 days of event time later), after the transaction.
        where = min(len(messages), pos + gap)
        inserts.append((where, Message("labels", _dumps(body), "mismatch", body["transaction_id"])))
    # A contradicting label comes before the genuine label of its transaction: it is rejected as
    # a mismatch, and the genuine label (a new message) is then recorded.
    for where, message in sorted(inserts, key=lambda x: x[0], reverse=True):
        messages.insert(where, message)
    return messages


def _steady_rate(timeline: list[tuple[float, int, int, float]]) -> float:
    """Transactions predicted per second while a backlog was waiting (the job's capacity): the
    median over 10 s spans in which at least 1,000 transactions were published and not predicted
    all along (0 when there was never such a backlog)."""
    rates = []
    times = [row[0] for row in timeline]
    for i, (t0, _, done0, _) in enumerate(timeline):
        end = bisect.bisect_right(times, t0 + 10.0)
        span = timeline[i:end]
        t1, _, done1, _ = span[-1]
        if t1 - t0 >= 8.0 and all(sent - done >= 1_000 for _, sent, done, _ in span):
            rates.append((done1 - done0) / (t1 - t0))
    return round(float(np.median(rates)), 1) if rates else 0.0


def _overload(chaos: Chaos, capacity: float) -> dict[str, Any] | None:
    """The burst against the capacity measured in the same run, both in transactions per second
    (the replay's mix of transactions and labels varies along it, so messages per second would
    compare different work): ``ratio`` is the transactions published per second during the burst
    over those predicted per second while a backlog waited (the target is 2). Also the backlog
    the burst left, the job's memory before and after it."""
    if chaos.burst is None:
        return None
    start, end, rate = chaos.burst
    during = [row for row in chaos.timeline if start <= row[0] <= end]
    burst_tx = (
        (during[-1][1] - during[0][1]) / (during[-1][0] - during[0][0]) if len(during) > 1 else 0.0
    )
    before = [rss for t, _, _, rss in chaos.timeline if t < start]
    after = [row for row in chaos.timeline if row[0] >= end]
    return {
        "start_s": start,
        "end_s": end,
        "rate_msg_per_s": rate,
        "burst_tx_per_s": round(burst_tx, 1),
        "capacity_tx_per_s": capacity,
        "ratio": round(burst_tx / capacity, 2) if capacity else None,
        "backlog_at_end_tx": (after[0][1] - after[0][2]) if after else None,
        "rss_before_mb": max(before, default=0.0),
        "rss_after_mb": max((rss for *_, rss in after), default=0.0),
    }


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def publish_all(
    run: Any,
    messages: list[Message],
    rate: float,
    burst: tuple[float, float, float] | None,
    counter: list[int],
) -> None:
    """Replays in order (in a thread) at ``rate`` per second (at ``burst`` = (start, end, rate)
    from ``start`` to ``end`` seconds after the first message), recording each message id and
    counting the transactions in ``counter``."""

    def rate_at(t: float) -> float:
        return burst[2] if burst is not None and burst[0] <= t < burst[1] else rate

    lock = threading.Lock()  # the callbacks run on the client's threads

    def published(i: int, message_id: str) -> None:
        messages[i].message_id = message_id
        if messages[i].kind == "transaction":
            with lock:
                counter[0] += 1

    run.replay(messages, rate_at, on_published=published)


def _datastore_predictions(project: str, ids: set[str]) -> dict[str, Any]:
    """The Prediction entities of these transaction ids, by key (a query over all entities
    takes minutes on the emulator at 100k; lookups by key take seconds)."""
    from google.cloud import datastore

    from pipelines.stores.retry import datastore_call_options, with_backoff

    client = datastore.Client(project=project)
    keys = [client.key("Prediction", tx_id) for tx_id in sorted(ids)]
    found: dict[str, Any] = {}
    for start in range(0, len(keys), 1000):
        lookup = functools.partial(
            client.get_multi, keys[start : start + 1000], **datastore_call_options()
        )
        for entity in with_backoff(lookup, "Datastore lookup"):
            found[entity.key.name] = entity
    return found


def _published_ids(messages: list[Message]) -> set[str]:
    """Every transaction id any published message names, rejects included: the only keys a
    prediction entity can have (the pipeline takes ids from messages), so looking these up finds
    every entity, including any that should not exist."""
    ids = set()
    for m in messages:
        try:
            body = json.loads(m.data)
        except (ValueError, RecursionError):
            continue
        tx_id = body.get("transaction_id") if isinstance(body, dict) else None
        if isinstance(tx_id, str) and tx_id:
            ids.add(tx_id)
    return ids


def split_dataset(config: ChaosConfig) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The preset's dataset in event-time order, split at ``warm_days`` after its start: (the
    history before it, the replay: the first ``min_transactions`` transactions from it, the
    split as an RFC 3339 time)."""
    from pipelines.app.simulator import PRESETS, simulate

    sim = PRESETS[config.preset]
    frame = simulate(sim).sort_values(["TX_DATETIME", "TRANSACTION_ID"]).reset_index(drop=True)
    start = pd.Timestamp(sim.start_date, tz="UTC") + pd.Timedelta(days=config.warm_days)
    after = frame.TX_DATETIME >= start
    replay = frame[after].iloc[: config.min_transactions].copy()
    if len(replay) < config.min_transactions:
        raise ValueError(
            f"the {config.preset} preset has only {len(replay):,} transactions after its first "
            f"{config.warm_days} days; use fewer --warm-days or --min-transactions"
        )
    return frame[~after].copy(), replay, start.strftime("%Y-%m-%dT%H:%M:%SZ")


def risk_nonzero_share(features: Iterable[Mapping[str, float]]) -> float:
    """The share of feature rows with a non-zero label-based feature (the terminal risk
    windows): what a comparison of these rows with the batch computation can see of labels."""
    names = [f.name for f in FEATURES if isinstance(f, WindowFeature) and f.needs_labels]
    rows = list(features)
    nonzero = sum(1 for row in rows if any(row[name] != 0 for name in names))
    return round(nonzero / len(rows), 4) if rows else 0.0


def run_chaos(config: ChaosConfig) -> dict[str, Any]:
    from models.export import export_model
    from models.train import TrainConfig, train_model
    from pipelines.app.local_run import LocalRun
    from pipelines.app.simulator import write_dataset
    from pipelines.core.training_data import training_features
    from pipelines.stores.bigtable import FeatureStore, StoreConfig

    rng = random.Random(config.seed)
    work = config.work_dir
    work.mkdir(parents=True, exist_ok=True)
    history, frame, start = split_dataset(config)
    # The batch computation over everything up to the replay's end, kept for the replayed rows.
    expected = training_features(pd.concat([history, frame]))
    expected = expected[expected.TRANSACTION_ID.isin(frame.TRANSACTION_ID)]
    model_dir = work / "models"
    train_on = training_features(history) if len(history) else expected
    model, _ = train_model(train_on, None, TrainConfig(num_trees=20))
    export_model(model, model_dir, {"preset": config.preset, "purpose": "chaos"})
    data_dir = work / "history"
    if len(history):
        shutil.rmtree(data_dir, ignore_errors=True)
        write_dataset(history, data_dir)

    messages = build_messages(frame, config)
    # A label contradicted before its genuine label arrives: the genuine label is still the
    # valid one (the contradiction is dead-lettered as a mismatch), see build_messages.
    valid_tx = {str(t) for t in frame.TRANSACTION_ID}
    chaos = Chaos()
    log = work / "pipeline.log"
    log.unlink(missing_ok=True)
    checkpoint = work / "checkpoint.json"
    checkpoint.unlink(missing_ok=True)
    with LocalRun(work / "stack", log_path=log) as run:
        topo = run.topology
        if len(history):
            t_warm = time.monotonic()
            run.warm_store(data_dir, work / "backfill-warm", start)
            chaos.warm_store_s = round(time.monotonic() - t_warm, 1)
            print(f"[chaos] store warmed until {start} in {chaos.warm_store_s} s", flush=True)
        job = run.start_job(
            [
                f"--model_dir={model_dir}",
                f"--recovery_checkpoint={checkpoint}",
                f"--label_wait_s={config.label_wait_s}",
                f"--max_in_flight={config.max_in_flight}",
            ]
        )
        sent_tx = [0]  # transactions published so far
        burst = None
        if config.overload_s:
            burst = (
                config.overload_at_s,
                config.overload_at_s + config.overload_s,
                config.overload_rate or 2 * config.rate,
            )
            chaos.burst = burst
        dead, predicted = run.dead_letters.raw, run.predictions.raw
        stop = threading.Event()
        t0 = time.monotonic()

        def sample() -> None:
            seen: set[str] = set()
            done = 0
            while not stop.wait(2.0):
                new = predicted[done:]
                done += len(new)
                seen.update(m.attributes.get("transaction_id", "") for m in new)
                rss = _rss_mb(job.proc.pid) if job.proc else 0.0
                chaos.timeline.append(
                    (round(time.monotonic() - t0, 1), sent_tx[0], len(seen), round(rss, 1))
                )

        threading.Thread(target=sample, daemon=True).start()
        publish_all(run, messages, config.rate, burst, sent_tx)

        def wait_for_prediction(after: int, timeout_s: float) -> float | None:
            """Seconds until the job predicts past ``after`` messages (None: it did not)."""
            try:
                waited = run.wait_for(lambda: len(predicted) > after, timeout_s, "", poll_s=0.2)
            except TimeoutError:
                return None
            return round(waited, 1)

        # The schedule: kills at random moments, outages between them, timed from the job's
        # first prediction (before it, the job is still starting and a fault proves little).
        plan: list[tuple[float, str, str]] = []
        if config.kills or config.outages:
            if wait_for_prediction(0, config.timeout_s) is None:
                raise RuntimeError(f"the job never predicted; see {log}")
            first = chaos.first_prediction_s = round(time.monotonic() - t0, 1)
            # Until the last transaction is due: only transactions make predictions (the
            # replay ends with labels only, 7 days of event time after the transactions).
            last_tx = max(i for i, m in enumerate(messages) if m.kind == "transaction")
            span = max((last_tx + 1) / config.rate - first, 1.0)
            kill_at = sorted(
                first + rng.uniform(0.1, 0.85) * span + 3 * k for k in range(config.kills)
            )
            outage_at = [
                (
                    name,
                    first
                    + max(0.0, (k + 1) / (len(config.outages) + 1) * span + rng.uniform(-5, 5)),
                )
                for k, name in enumerate(config.outages)
            ]
            plan = sorted(
                [(t, "kill", "") for t in kill_at] + [(t, "outage", n) for n, t in outage_at]
            )
        for at, what, name in plan:
            run.sleep(t0 + at - time.monotonic())
            retries_before = len(logged_retries(log))
            fault = Fault(
                what if what == "kill" else name,
                round(time.monotonic() - t0, 1),
                len(predicted),
            )
            chaos.faults.append(fault)
            if what == "kill":
                print(f"[chaos] t={fault.at_s}s SIGKILL; restarting with resume", flush=True)
                run.restart_job()
                chaos.kills.append(fault.at_s)
            else:
                print(f"[chaos] t={fault.at_s}s {name} stopped for {config.outage_s}s", flush=True)
                with run.stack.outage(name):
                    # The job must not die while its dependency is down (run.sleep checks).
                    grace = min(STALL_GRACE_S, config.outage_s / 2)
                    run.sleep(grace)
                    down_from = len(predicted)
                    run.sleep(config.outage_s - grace)
                    fault.predictions_while_down = len(predicted) - down_from
                chaos.outages.append((name, fault.at_s, config.outage_s))
                job.check()
            fault.retries = logged_retries(log)[retries_before:]
            # The job goes on (and the next fault waits for it to be at work again).
            fault.resumed_after_s = wait_for_prediction(len(predicted), RESUME_TIMEOUT_S)
            print(f"[chaos] {fault}", flush=True)
        # Wait until every valid transaction has its prediction and every rejection is out.
        n_rejects = sum(1 for m in messages if _rejected(m))
        lookup = _published_ids(messages)
        stored: dict[str, Any] = {}

        def everything_out() -> bool:
            nonlocal stored
            # Datastore is read only once the topics say everything is out.
            if run.replaying() or not valid_tx <= {
                m.attributes.get("transaction_id", "") for m in list(predicted)
            }:
                return False
            if len({m.attributes.get("original_message_id", "") for m in list(dead)}) < n_rejects:
                return False
            time.sleep(5)  # let late corrections land
            stored = _datastore_predictions(topo.project, lookup)
            return valid_tx <= set(stored)

        with suppress(TimeoutError):  # timed out: report what is there
            run.wait_for(everything_out, t0 + config.timeout_s - time.monotonic(), "", poll_s=3)
        if not valid_tx <= set(stored):
            stored = _datastore_predictions(topo.project, lookup)
        stop.set()
        run.stop_monitors()
        elapsed = time.monotonic() - t0
        store = FeatureStore(StoreConfig(topo.project, topo.bigtable_instance, topo.bigtable_table))
        index = {}
        ids = sorted(valid_tx)
        for start_i in range(0, len(ids), 2000):
            index.update(store.read_ids(ids[start_i : start_i + 2000]))

    return _report(config, messages, valid_tx, expected, stored, dead, index, chaos, elapsed)


def faults_hit(faults: list[Fault]) -> bool:
    """Whether every fault struck a job at work and the job came through it: it had predicted
    before, predicted nothing while a store was stopped, and predicted again afterwards."""
    return all(
        f.predictions_before > 0
        and f.resumed_after_s is not None
        and (f.what == "kill" or f.predictions_while_down == 0)
        for f in faults
    )


def _report(
    config: ChaosConfig,
    messages: list[Message],
    valid_tx: set[str],
    expected: Any,
    stored: dict[str, Any],
    dead: list[Any],
    index: dict[str, Any],
    chaos: Chaos,
    elapsed: float,
) -> dict[str, Any]:
    from pipelines.app.demo import feature_mismatches

    rejects = {m.message_id for m in messages if _rejected(m)}
    valid_ids = {m.message_id for m in messages if not _rejected(m)}
    dl_ids = [m.attributes.get("original_message_id", "") for m in dead]
    dl_set = set(dl_ids)
    reasons: dict[str, int] = {}
    for m in dead:
        reasons[m.attributes.get("reason", "?")] = (
            reasons.get(m.attributes.get("reason", "?"), 0) + 1
        )
    missing_predictions = sorted(valid_tx - set(stored))
    # The label in force must be the genuine label message, not a duplicate or contradiction.
    genuine_label = {m.transaction_id: m.message_id for m in messages if m.kind == "label"}
    labels_missing = [
        tx
        for tx in valid_tx
        if (
            index.get(tx) is None
            or index[tx].label is None
            or index[tx].label.get("s") != "recorded"
            or index[tx].label.get("m") != genuine_label.get(tx)
        )
    ]
    tx_missing = [tx for tx in valid_tx if index.get(tx) is None or index[tx].tx is None]
    compared = [
        {"transaction_id": t, "features": json.loads(stored[t]["features"])}
        for t in sorted(valid_tx & set(stored))
    ]
    mismatches = feature_mismatches(compared, expected, MODEL_INPUTS, "TRANSACTION_ID")
    steady = _steady_rate(chaos.timeline)
    lost = len(missing_predictions) + len(set(labels_missing) | set(tx_missing))
    result: dict[str, Any] = {
        "sent": len(messages),
        "valid": len(valid_ids),
        "valid_transactions": len(valid_tx),
        "malformed": len(rejects),
        "predictions_stored": len(valid_tx & set(stored)),
        "lost": lost,
        "duplicated": len(set(stored) - valid_tx),
        "dead_lettered": len(dl_set & rejects),
        "dead_letter_messages": len(dl_ids),
        "valid_dead_lettered": len(dl_set & valid_ids),
        "valid_dead_lettered_details": sorted(
            {
                (m.attributes.get("reason", ""), m.attributes.get("detail", ""))
                for m in dead
                if m.attributes.get("original_message_id") in valid_ids
            }
        )[:5],
        "kills": len(chaos.kills),
        "outages": len(chaos.outages),
        "feature_mismatches": mismatches,
        "risk_features_nonzero_share": risk_nonzero_share(c["features"] for c in compared),
        "warm_days": config.warm_days,
        "warm_store_s": chaos.warm_store_s,
        "dead_letter_reasons": dict(sorted(reasons.items())),
        "kill_times_s": chaos.kills,
        "outage_windows": chaos.outages,
        "first_prediction_s": chaos.first_prediction_s,
        "faults": [asdict(f) for f in chaos.faults],
        "faults_hit": faults_hit(chaos.faults),
        "max_rss_mb": max((rss for *_, rss in chaos.timeline), default=0.0),
        "backlog_peak": max((sent - done for _, sent, done, _ in chaos.timeline), default=0),
        "drained_s": next((t for t, _, done, _ in chaos.timeline if done >= len(valid_tx)), None),
        "steady_tx_per_s": steady,
        "overload": _overload(chaos, steady),
        "timeline": chaos.timeline,
        "elapsed_s": round(elapsed, 1),
        "rate": config.rate,
    }
    result["ok"] = (
        result["lost"] == 0
        and result["duplicated"] == 0
        and result["dead_lettered"] == result["malformed"]
        and result["valid_dead_lettered"] == 0
        and result["feature_mismatches"] == 0
        and result["risk_features_nonzero_share"] >= config.min_risk_share
        and result["kills"] >= config.kills
        and result["outages"] == len(config.outages)
        and result["faults_hit"]
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = ChaosConfig()
    for name, value in vars(defaults).items():
        if isinstance(value, (bool, tuple)):
            continue
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--outages", default=",".join(defaults.outages))
    args = parser.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k != "outages"}
    config = ChaosConfig(**values, outages=tuple(x for x in args.outages.split(",") if x))
    result = run_chaos(config)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
