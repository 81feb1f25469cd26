"""Dependency outages: the Bigtable or the Datastore emulator stops answering for 15 s mid-stream
(paused with SIGSTOP, so it keeps its data) and comes back; writers that give every call a
deadline and retry through with_backoff lose nothing and do not die.

The stack is this module's own (it pauses emulators, which must not disturb the session's)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest

from pipelines.features import CUSTOMER, TERMINAL
from pipelines.local import LOCAL_PROJECT, LocalStack, StackError, environment, free_port
from pipelines.retry import (
    bigtable_mutate_options,
    datastore_call_options,
    raise_for_statuses,
    with_backoff,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

OUTAGE_S = 15.0
BATCH = 20
CUSTOMERS = [f"oc{i}" for i in range(5)]
TERMINALS = [f"ot{i}" for i in range(3)]
BASE_US = 1_522_663_200_000_000
KIND = "OutagePrediction"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    from pipelines.feature_store import StoreConfig, create_table

    stack = LocalStack(tmp_path_factory.mktemp("outage-state"))
    ports = {"pubsub": free_port(), "bigtable": free_port(), "datastore": free_port()}
    try:
        stack.up(ports)
    except StackError as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"emulators could not start: {exc}")
    try:
        with environment(stack.env()):
            create_table(StoreConfig(LOCAL_PROJECT, "rillet", "features"))
            yield stack
    finally:
        stack.down()  # resumes a paused emulator first


@dataclass
class Writer:
    """Calls write(batch_number) -> ids in a loop until stopped; counts retries and failures."""

    write: Callable[[int], list[str]]
    acked: list[str] = field(default_factory=list)
    batches: int = 0
    retries: int = 0
    errors: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def on_retry(self, attempt: int, exc: BaseException, delay: float) -> None:
        self.retries += 1

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.acked += self.write(self.batches)
                self.batches += 1
                time.sleep(0.05)
        except BaseException as exc:
            self.errors.append(exc)

    def start(self) -> Writer:
        self.thread = threading.Thread(target=self.run, name="outage-writer", daemon=True)
        self.thread.start()
        return self

    def wait_for(self, batches: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.batches < batches and not self.errors and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not self.errors, self.errors
        assert self.batches >= batches, f"the writer is stuck at batch {self.batches}"

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        assert not self.errors, self.errors


def ride_out(stack: LocalStack, name: str, writer: Writer, during: Callable[[], None]) -> float:
    """Writes before, during and after a 15 s outage of `name`; returns the recovery time (from
    the resume to the writer's next acknowledged batch)."""
    writer.start().wait_for(3, timeout_s=10)
    with stack.outage(name):
        assert stack.paused(name)
        during()
        time.sleep(OUTAGE_S)
        in_outage = writer.batches
    assert not stack.paused(name)
    resumed = time.monotonic()
    writer.wait_for(in_outage + 1, timeout_s=30)
    recovery = time.monotonic() - resumed
    writer.wait_for(in_outage + 3, timeout_s=10)
    writer.finish()
    return recovery


class Reader(threading.Thread):
    """One read started during the outage, through the code's default client settings."""

    def __init__(self, read: Callable[[], Any]) -> None:
        super().__init__(name="outage-reader", daemon=True)
        self._read = read
        self.result: Any = None
        self.error: BaseException | None = None
        self.took = 0.0

    def run(self) -> None:
        start = time.monotonic()
        try:
            self.result = self._read()
        except BaseException as exc:
            self.error = exc
        self.took = time.monotonic() - start


def test_bigtable_outage_loses_nothing(stack: LocalStack) -> None:
    from pipelines.feature_store import FAMILY_TX, EntityHistory, FeatureStore, StoreConfig

    store = FeatureStore(StoreConfig(LOCAL_PROJECT, "rillet", "features"))

    def rows(prefix: str) -> tuple[list[str], list[Any]]:
        ids = [f"{prefix}-{j}" for j in range(BATCH)]
        n = len(ids)
        return ids, store.transaction_rows(
            ids,
            [CUSTOMERS[j % len(CUSTOMERS)] for j in range(n)],
            [TERMINALS[j % len(TERMINALS)] for j in range(n)],
            [BASE_US + j * 1000 for j in range(n)],
            [float(j) for j in range(n)],
        )

    def stored(entity: Any, ids: list[str]) -> set[str]:
        into = {FAMILY_TX: EntityHistory()}
        store.read_cells(entity, ids, [FAMILY_TX], 0, BASE_US + 10**12, into)
        return set(into[FAMILY_TX].transaction_id)

    before, before_rows = rows("before")
    store.write(before_rows)

    def mutate(pending: list[Any]) -> None:
        """One MutateRows call, as FeatureStore.write would make it with a deadline: the rows
        that failed stay in `pending` for the next attempt."""
        statuses = store.table.mutate_rows(pending, **bigtable_mutate_options())
        pending[:] = [r for r, s in zip(pending, statuses, strict=True) if s.code != 0]
        raise_for_statuses(statuses, "Bigtable write")

    def write(batch: int) -> list[str]:
        ids, pending = rows(f"during-{batch}")
        with_backoff(partial(mutate, pending), "Bigtable write", on_retry=writer.on_retry)
        return ids

    writer = Writer(write)
    # A read issued during the outage with FeatureStore's current settings (no deadline passed).
    reader = Reader(lambda: stored(CUSTOMER, CUSTOMERS))
    recovery = ride_out(stack, "bigtable", writer, reader.start)
    reader.join(timeout=60)

    assert writer.retries >= 1, "the writer never noticed the outage"
    assert recovery < 12.0
    assert reader.error is None and set(before) <= reader.result
    assert reader.took >= OUTAGE_S - 1  # it hung until the resume, then completed
    written = set(before) | set(writer.acked)
    assert stored(CUSTOMER, CUSTOMERS) == written
    assert stored(TERMINAL, TERMINALS) == written


def test_datastore_outage_loses_nothing(stack: LocalStack) -> None:
    from google.cloud import datastore

    client = datastore.Client(project=LOCAL_PROJECT, namespace="outage")
    opts = datastore_call_options()

    def entities(prefix: str, revision: int) -> list[Any]:
        out = []
        for j in range(BATCH):
            entity = datastore.Entity(client.key(KIND, f"{prefix}-{j}"))
            entity.update({"revision": revision, "score": j / BATCH})
            out.append(entity)
        return out

    def put_if_newer(chunk: list[Any]) -> None:
        """One transaction as sinks._put_if_newer would run it with per-call deadlines."""
        txn = client.transaction()
        txn.begin(**opts)
        try:
            current = client.get_multi([e.key for e in chunk], transaction=txn, **opts)
            stored = {e.key.name: e.get("revision", -1) for e in current}
            for e in chunk:
                if e["revision"] > stored.get(e.key.name, -1):
                    txn.put(e)
        except Exception:
            with suppress(Exception):
                txn.rollback(**opts)
            raise
        txn.commit(**opts)  # a failed commit leaves nothing to roll back

    before = entities("before", 1)
    client.put_multi(before)

    def write(batch: int) -> list[str]:
        chunk = entities(f"during-{batch}", 1)
        with_backoff(
            lambda: client.put_multi(chunk, **opts), "Datastore commit", on_retry=writer.on_retry
        )
        # ... and a correction of it, in the sink's conditional transaction.
        newer = entities(f"during-{batch}", 2)[: BATCH // 2]
        with_backoff(lambda: put_if_newer(newer), "Datastore transaction", on_retry=writer.on_retry)
        return [e.key.name for e in chunk]

    writer = Writer(write)
    # A lookup issued during the outage with the client's defaults (60 s deadline).
    reader = Reader(lambda: client.get_multi([e.key for e in before]))
    recovery = ride_out(stack, "datastore", writer, reader.start)
    reader.join(timeout=60)

    assert writer.retries >= 1, "the writer never noticed the outage"
    assert recovery < 12.0
    assert reader.error is None and len(reader.result) == BATCH
    assert reader.took >= OUTAGE_S - 1
    names = [e.key.name for e in before] + writer.acked
    found = {}
    for start in range(0, len(names), 500):
        keys = [client.key(KIND, n) for n in names[start : start + 500]]
        found.update({e.key.name: e for e in client.get_multi(keys)})
    assert set(found) == set(names)
    corrected = {n for n in writer.acked if int(n.rsplit("-", 1)[1]) < BATCH // 2}
    assert {n for n, e in found.items() if e["revision"] == 2} == corrected
