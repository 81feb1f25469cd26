"""Dependency outages: the Bigtable or the Datastore emulator stops answering for 15 s mid-stream
(paused with SIGSTOP, so it keeps its data) and comes back, under the product's own writers and
readers: ``FeatureStore.apply`` / ``read_buckets`` and the Datastore sink
(``_DatastoreWriteDoFn``'s conditional writes: a lookup and a commit with preconditions).

README "Guarantees", store outage: every Bigtable/Datastore call has a deadline and is retried
with backoff (pipelines.stores.retry); the job stalls and does not die. So, for each store:

- a call in flight when the store stops fails with a deadline error after ``CALL_TIMEOUT_S``
  (it does not hang through the outage), and is retried (the retries pipelines.stores.retry logs are
  counted; the client calls are observed by wrappers that delegate to the real call);
- a read issued during the outage returns once the store is back, after at least one retried
  attempt, with the right data;
- after the resume the writers go on and everything they acknowledged is stored.

The outage is longer than the call deadline, so a call without one would hang until the resume
and succeed without any retry: these tests fail then.

The stack is this module's own (it pauses emulators, which must not disturb the session's)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from pipelines.app.local import LOCAL_PROJECT, LocalStack, StackError
from pipelines.core.definitions import CUSTOMER, MODEL_INPUTS, TERMINAL
from pipelines.stores.retry import CALL_TIMEOUT_S
from tests.events import HANDBOOK_KEYS

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

OUTAGE_S = 15.0
BATCH = 20
CUSTOMERS = [f"oc{i}" for i in range(5)]
TERMINALS = [f"ot{i}" for i in range(3)]
BASE_US = 1_522_663_200_000_000
KIND = "OutagePrediction"
NAMESPACE = "outage"
# A call that fails on its deadline took CALL_TIMEOUT_S (plus scheduling on a loaded machine).
DEADLINE_SLACK_S = 3.0
assert OUTAGE_S > CALL_TIMEOUT_S + DEADLINE_SLACK_S, "the outage must outlast a call deadline"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    from pipelines.app.local_run import LocalRun

    try:
        with LocalRun(tmp_path_factory.mktemp("outage-state")) as run:
            yield run.stack  # LocalStack.down resumes a paused emulator first
    except StackError as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"emulators could not start: {exc}")


class RetryLog(logging.Handler):
    """The records pipelines.stores.retry.with_backoff logs: one WARNING per retry, with the
    arguments (what, exception type, exception, attempt, wait, elapsed, budget); an ERROR when it
    gives up."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self._lock_records = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_records:
            self.records.append(record)

    def retries(self, what: str) -> list[tuple[str, float]]:
        """(exception type, seconds since the first attempt) of every retry of ``what``."""
        with self._lock_records:
            return [
                (str(r.args[1]), float(r.args[5]))  # type: ignore[index]
                for r in self.records
                if r.levelno == logging.WARNING and r.args and r.args[0] == what
            ]

    def gave_up(self) -> list[str]:
        with self._lock_records:
            return [r.getMessage() for r in self.records if r.levelno >= logging.ERROR]


@pytest.fixture
def retry_log() -> Iterator[RetryLog]:
    handler = RetryLog()
    logger = logging.getLogger("pipelines.stores.retry")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@dataclass
class Call:
    """One observed client call: when it started (monotonic), how long it took, what it gave."""

    start: float
    took: float
    thread: int
    outcome: str  # "ok", an exception type name, or Bigtable's failed per-row status codes


@dataclass
class Writer:
    """Calls write(batch_number) -> ids in a loop until stopped; records when each batch was
    acknowledged."""

    name: str
    write: Callable[[int], list[str]]
    acked: list[str] = field(default_factory=list)
    done_at: list[float] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def batches(self) -> int:
        return len(self.done_at)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.acked += self.write(self.batches)
                self.done_at.append(time.monotonic())
                time.sleep(0.05)
        except BaseException as exc:
            self.errors.append(exc)

    def start(self) -> Writer:
        self.thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self.thread.start()
        return self

    def wait_for(self, batches: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.batches < batches and not self.errors and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not self.errors, self.errors
        assert self.batches >= batches, f"{self.name} is stuck at batch {self.batches}"

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        assert not self.errors, self.errors


class Reader(threading.Thread):
    """One read through the product's code, started during the outage."""

    def __init__(self, read: Callable[[], Any]) -> None:
        super().__init__(name="outage-reader", daemon=True)
        self._read = read
        self.result: Any = None
        self.error: BaseException | None = None
        self.started_at = 0.0
        self.ended_at = 0.0

    def run(self) -> None:
        self.started_at = time.monotonic()
        try:
            self.result = self._read()
        except BaseException as exc:
            self.error = exc
        self.ended_at = time.monotonic()


@dataclass
class Outage:
    paused_at: float
    resuming_at: float  # just before SIGCONT
    resumed_at: float  # once the emulator runs again


def ride_out(stack: LocalStack, name: str, writers: list[Writer], reader: Reader) -> Outage:
    """Writers before, during and after an OUTAGE_S outage of ``name``; the reader starts 1 s
    into it. Returns when every writer acknowledged 3 batches after the resume."""
    for writer in writers:
        writer.start().wait_for(3, timeout_s=15)
    with stack.outage(name):
        paused_at = time.monotonic()
        assert stack.paused(name)
        time.sleep(1.0)
        reader.start()
        time.sleep(max(0.0, paused_at + OUTAGE_S - time.monotonic()))
        at_resume = {w.name: w.batches for w in writers}
        resuming_at = time.monotonic()
    resumed_at = time.monotonic()
    assert not stack.paused(name)
    for writer in writers:
        writer.wait_for(at_resume[writer.name] + 3, timeout_s=30)
    for writer in writers:
        writer.finish()
    reader.join(timeout=60)
    assert not reader.is_alive(), "the read issued during the outage never returned"
    return Outage(paused_at, resuming_at, resumed_at)


def assert_stalled_and_resumed(writer: Writer, outage: Outage) -> None:
    """The writer acknowledged nothing while the store was down (at most the batch it had
    finished as the pause landed), and went on right after the resume."""
    during = [t for t in writer.done_at if outage.paused_at + 0.5 < t < outage.resuming_at]
    assert during == [], f"{writer.name} acknowledged {len(during)} batches with the store down"
    after = [t for t in writer.done_at if t >= outage.resuming_at]
    assert after, f"{writer.name} never resumed"
    assert after[0] - outage.resuming_at < CALL_TIMEOUT_S, "slow recovery after the resume"


def assert_deadline_retries(retries: list[tuple[str, float]], what: str) -> None:
    """``what`` failed on its deadline at least once during the outage and was retried."""
    assert retries, f"{what}: no retry logged, so no call failed during the outage"
    deadlines = [elapsed for kind, elapsed in retries if kind == "DeadlineExceeded"]
    assert deadlines, f"{what}: retries, but none on a deadline: {retries}"
    # The first failure came after one call deadline, not after the outage (a call without a
    # deadline hangs until the resume and then succeeds).
    assert CALL_TIMEOUT_S - 1.0 <= deadlines[0] <= CALL_TIMEOUT_S + DEADLINE_SLACK_S, deadlines


def test_bigtable_outage_loses_nothing(
    stack: LocalStack, retry_log: RetryLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.core.cells import bucket_of
    from pipelines.stores.bigtable import FeatureStore, StoreConfig
    from pipelines.stores.window_store import BucketWrite, Cell, Writes
    from tests.events import handbook_cell, handbook_layout, summary_of

    layouts = {CUSTOMER: handbook_layout("customer"), TERMINAL: handbook_layout("terminal")}

    store = FeatureStore(StoreConfig(LOCAL_PROJECT, "rillet", "features"))
    table = store.table

    # Observe the client calls the product makes, delegating to the real ones.
    mutations: list[Call] = []
    gapic = table._table_impl.client._gapic_client
    real_mutate = gapic.mutate_rows

    def mutate_rows(*args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        try:
            responses = list(real_mutate(*args, **kwargs))
        except Exception as exc:
            mutations.append(
                Call(start, time.monotonic() - start, threading.get_ident(), repr(exc))
            )
            raise
        failed = sorted({e.status.code for r in responses for e in r.entries if e.status.code})
        outcome = "ok" if not failed else f"codes {failed}"
        mutations.append(Call(start, time.monotonic() - start, threading.get_ident(), outcome))
        return iter(responses)

    monkeypatch.setattr(gapic, "mutate_rows", mutate_rows)
    # Each ReadRows attempt (the client retries a read internally, attempt by attempt, with the
    # per-attempt deadline the product passes): (thread, attempt timeout).
    read_attempts: list[tuple[int, float | None]] = []
    real_read = gapic.read_rows

    def read_rows(*args: Any, **kwargs: Any) -> Any:
        read_attempts.append((threading.get_ident(), kwargs.get("timeout")))
        return real_read(*args, **kwargs)

    monkeypatch.setattr(gapic, "read_rows", read_rows)

    def rows(prefix: str) -> tuple[list[str], Writes]:
        ids = [f"{prefix}-{j}" for j in range(BATCH)]
        writes = Writes()
        cells: dict[tuple[Any, str], dict[str, Cell]] = {}
        for j, tx_id in enumerate(ids):
            customer, terminal = CUSTOMERS[j % len(CUSTOMERS)], TERMINALS[j % len(TERMINALS)]
            t_us = BASE_US + j * 1000
            cells.setdefault((CUSTOMER, customer), {})[tx_id] = handbook_cell(
                layouts[CUSTOMER], t_us, float(j), terminal
            )
            cells.setdefault((TERMINAL, terminal), {})[tx_id] = handbook_cell(
                layouts[TERMINAL], t_us, float(j), customer
            )
        for (entity, entity_id), tx in cells.items():
            layout = layouts[entity]
            summary = summary_of(layout, tx, {})
            writes.buckets.append(
                BucketWrite(layout, entity_id, bucket_of(BASE_US), tx, {}, summary, None)
            )
        return ids, writes

    def stored(entity: Any, ids: list[str]) -> set[str]:
        found = store.read_buckets(
            layouts[entity], [(i, bucket_of(BASE_US)) for i in ids], labels=False
        )
        return {tx_id for cells in found.values() for tx_id in cells.tx}

    before, before_rows = rows("before")
    store.apply(before_rows)

    def write(batch: int) -> list[str]:
        ids, batch_rows = rows(f"during-{batch}")
        store.apply(batch_rows)
        return ids

    writer = Writer("bigtable-writer", write)
    reader = Reader(lambda: stored(CUSTOMER, CUSTOMERS))
    outage = ride_out(stack, "bigtable", [writer], reader)

    # The writer stalled and came back, and the write in flight failed on its deadline
    # (DeadlineExceeded, or rows with DEADLINE_EXCEEDED, code 4) instead of hanging, and was
    # retried.
    assert_stalled_and_resumed(writer, outage)
    timed_out = [
        c for c in mutations if "DeadlineExceeded" in c.outcome or c.outcome == "codes [4]"
    ]
    assert timed_out, f"no MutateRows call failed on its deadline: {mutations[-5:]}"
    for call in timed_out:
        assert CALL_TIMEOUT_S - 1.0 <= call.took <= CALL_TIMEOUT_S + DEADLINE_SLACK_S, call
    assert max(c.took for c in mutations) <= CALL_TIMEOUT_S + DEADLINE_SLACK_S
    assert_deadline_retries(retry_log.retries("Bigtable write"), "Bigtable write")
    assert retry_log.gave_up() == []

    # The read issued during the outage: attempts bounded by the call deadline, retried (the
    # first one timed out with the store down), and it returned once the store was back.
    mine = [timeout for thread, timeout in read_attempts if thread == reader.ident]
    assert len(mine) >= 2, f"the read was not retried: {len(mine)} attempt(s)"
    assert all(t is not None and t <= CALL_TIMEOUT_S for t in mine), mine
    assert reader.error is None, reader.error
    assert set(before) <= reader.result
    assert outage.resuming_at <= reader.ended_at <= outage.resumed_at + CALL_TIMEOUT_S

    # Nothing lost: every acknowledged batch is in both entities' rows.
    written = set(before) | set(writer.acked)
    assert len(writer.acked) >= BATCH * 6
    assert stored(CUSTOMER, CUSTOMERS) == written
    assert stored(TERMINAL, TERMINALS) == written


def prediction(tx_id: str, revision: int, correction: bool = False) -> dict[str, Any]:
    """A prediction record as the sink receives it (pipelines.transforms.sinks)."""
    return {
        "transaction_id": tx_id,
        "entity_keys": {"customer_id": "oc1", "terminal_id": "ot1"},
        "event_time_us": BASE_US,
        "publish_time_us": BASE_US,
        "processing_time_us": BASE_US + 1000,
        "score": revision / 10,
        "risk_band": "low",
        "model_version": "outage",
        "challenger_score": None,
        "challenger_version": None,
        "revision": revision,
        "correction": correction,
        "features": {name: float(revision) for name in MODEL_INPUTS},
    }


def test_datastore_outage_loses_nothing(
    stack: LocalStack, retry_log: RetryLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.transforms.sinks import RiskBands, _DatastoreWriteDoFn

    sink = _DatastoreWriteDoFn(LOCAL_PROJECT, KIND, NAMESPACE, RiskBands(), HANDBOOK_KEYS)
    sink.setup()
    client = sink._client

    # Observe the sink's commits (the Datastore API's commit: the originals' upserts and the
    # corrections' transactions), delegating to the real call.
    api = client._datastore_api
    commits: list[Call] = []
    real_commit = api.commit

    def commit(*args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        outcome = "ok"
        try:
            return real_commit(*args, **kwargs)
        except Exception as exc:
            outcome = type(exc).__name__
            raise
        finally:
            commits.append(Call(start, time.monotonic() - start, threading.get_ident(), outcome))

    monkeypatch.setattr(api, "commit", commit)

    def records(ids: list[str], revision: int) -> list[dict[str, Any]]:
        return [prediction(i, revision, revision > 1) for i in ids]

    # Before the outage: as if a correction (revision 3) had landed before its originals.
    before = [f"before-{j}" for j in range(BATCH)]
    sink._put_newest(records(before, 3))

    def originals(batch: int) -> list[str]:
        ids = [f"orig-{batch}-{j}" for j in range(BATCH)]
        sink._put_newest(records(ids, 1))
        return ids

    def corrections(batch: int) -> list[str]:
        ids = [f"corr-{batch}-{j}" for j in range(BATCH // 2)]
        sink._put_newest(records(ids, 2))
        sink._put_newest(records(ids, 1))  # an older revision arriving late: not written
        return ids

    # A writer that looked its keys up before the outage and commits during it (the conditional
    # commit itself must fail on its deadline and be retried, not only the lookups).
    stale_ids = [[f"stale-{batch}-{j}" for j in range(BATCH)] for batch in range(100)]
    looked_up = sink._stored([r for ids in stale_ids for r in records(ids, 1)])
    assert looked_up == {}  # none of them exists yet

    def commits_only(batch: int) -> list[str]:
        ids = stale_ids[batch]
        sink._commit_newer(records(ids, 1), looked_up)
        return ids

    writers = [
        Writer("datastore-originals", originals),
        Writer("datastore-corrections", corrections),
        Writer("datastore-commits", commits_only),
    ]
    # During the outage: the originals of `before` arrive late (lower revision: not written).
    reader = Reader(lambda: sink._put_newest(records(before, 1)))
    outage = ride_out(stack, "datastore", writers, reader)

    for writer in writers:
        assert_stalled_and_resumed(writer, outage)
    # Every path failed on its deadline and was retried: the conditional commit and the lookup.
    for what in ("Datastore commit", "Datastore lookup"):
        assert_deadline_retries(retry_log.retries(what), what)
    assert retry_log.gave_up() == []
    timed_out = [c for c in commits if c.outcome == "DeadlineExceeded"]
    assert timed_out, f"no commit failed on its deadline: {commits[-5:]}"
    assert max(c.took for c in commits) <= CALL_TIMEOUT_S + DEADLINE_SLACK_S, commits

    # The late originals issued during the outage were decided once Datastore was back.
    assert reader.error is None, reader.error
    assert outage.resuming_at <= reader.ended_at <= outage.resumed_at + CALL_TIMEOUT_S

    # Nothing lost, and the highest revision of each entity stored.
    expected = {n: 3 for n in before}
    expected.update({n: 1 for n in writers[0].acked})
    expected.update({n: 2 for n in writers[1].acked})
    expected.update({n: 1 for n in writers[2].acked})
    assert len(writers[0].acked) >= BATCH * 6 and len(writers[1].acked) >= BATCH // 2 * 6
    names = sorted(expected)
    found: dict[str, int] = {}
    for start in range(0, len(names), 500):
        keys = [client.key(KIND, n) for n in names[start : start + 500]]
        found.update({e.key.name: e["revision"] for e in client.get_multi(keys)})
    assert found == expected
