"""The coordinator: only what a Dataflow streaming runner does, around the workers.

Per (stage, key) it keeps the elements waiting (the shuffle), the key's committed state (bytes)
and timers, the worker that owns the key and its lease. It forms work items (one key per work
item, Dataflow streaming's model; or several keys of one worker and stage with ``multi_key``),
dispatches them, and commits an attempt only if it succeeded and still holds the lease of every
key it ran: then its outputs go to the next stages' keys, its state and timers are applied, and
the timers it fired are removed. A failed attempt, or one whose commit is refused, is retried:
the same work item (same elements, same fired timers), first in its keys' line, sometimes on
another worker. A key's work items are serial: the next one starts only after the previous one
committed; only a zombie may still run beside it.

Faults, decided here per attempt (``FaultPlan``) and carried out by the client wrappers in the
worker (``faults``): fail right after the attempt's first Bigtable write, Datastore commit or
publish, or refuse the commit of an attempt that succeeded. Zombies: the attempt's first write
is held in the worker; when the coordinator hears of it, it revokes the attempt's leases, moves
its keys to another worker and retries the work item there; the held write is released once the
retry and the key's next work item committed (``zombie_release_after`` commits of the key, or
``zombie_hold_s`` after the retry's commit if nothing else comes), so that the zombie writes over
what newer attempts wrote, the nastiest interleaving; its own commit is refused. Keys also move
between workers (and back) after commits. Only stages seen writing (in the write log) are
planned faults after a write, so every planned fault can strike.

Timers: processing-time timers fire by the wall clock (what ``Timestamp.now()`` in the DoFns
reads). Event-time timers fire by a harness watermark: a stage's input watermark is the minimum
of the timestamps of the elements not yet delivered by the fed inputs, of the elements waiting or
in flight in this stage and every stage upstream of it, and of the hold timestamps of the
event-time timers set in the stages upstream; once every input is exhausted and nothing is in
flight, it is the end of time (a drain), and the remaining event-time timers fire.
"""

from __future__ import annotations

import heapq
import json
import logging
import multiprocessing
import pickle
import queue
import random
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.utils.timestamp import MAX_TIMESTAMP

from bench.dataflow_model.bundle import windowed_coder
from bench.dataflow_model.graph import COLLECTED, IMPULSE, SOURCE, Graph
from bench.dataflow_model.messages import (
    AFTER_BIGTABLE,
    AFTER_DATASTORE,
    AFTER_PUBLISH,
    BEFORE_COMMIT,
    AttemptResult,
    FaultPlan,
    TimerChange,
    WorkItem,
    Write,
)
from bench.dataflow_model.worker import worker_main

__all__ = ["INJECTION_POINTS", "Coordinator", "ModelConfig", "RunStats", "SourceBatch"]

_LOGGER = logging.getLogger(__name__)

INJECTION_POINTS = (AFTER_BIGTABLE, AFTER_DATASTORE, AFTER_PUBLISH, BEFORE_COMMIT)
_END_OF_TIME_US = int(MAX_TIMESTAMP.micros)


@dataclass
class ModelConfig:
    """The runner model's knobs (rates are per attempt)."""

    workers: int = 4
    threads: int = 4
    multi_key: bool = False
    keys_per_item: int = 20  # multi-key mode: the most keys in one work item
    elements_per_item: int = 100  # the most elements of one key in one work item
    # The probability that an attempt fails after its first write of that kind (or, for
    # BEFORE_COMMIT, that the commit of an attempt that succeeded is refused).
    fail_rates: dict[str, float] = field(
        default_factory=lambda: {p: 0.01 for p in INJECTION_POINTS}
    )
    zombie_rate: float = 0.003  # an attempt becomes a zombie (needs workers >= 2)
    zombie_release_after: int = 2  # commits of the key (its retry first) before the release
    zombie_hold_s: float = 5.0  # or this long after the retry's commit
    move_rate: float = 0.01  # after a commit, the work item's keys move to another worker
    retry_elsewhere: float = 0.5  # a failed work item's retry moves to another worker
    max_injected_per_item: int = 3  # then the item's attempts run without planned faults
    max_failures_per_item: int = 20  # unplanned failures of one item before the run aborts
    backlog: int = 300  # elements waiting or in flight before the inputs wait
    timer_drain_s: float = 0.0  # at the end, wait for processing-time timers due this soon
    seed: int = 7
    timeout_s: float = 3600.0
    start_timeout_s: float = 300.0
    # More write methods for the workers to wrap, ("module:Class", method, kind): a toy store.
    extra_writes: tuple[tuple[str, str, str], ...] = ()


@dataclass
class SourceBatch:
    """A work item of a fed input: encoded WindowedValues (with their timestamps, µs)."""

    input: str
    elements: list[tuple[bytes, int]]


@dataclass
class RunStats:
    """What the run did (the runner's figures; the oracle's come from the stores)."""

    work_items: int = 0  # committed
    attempts: int = 0
    retries: int = 0  # attempts of a work item that had a failed or refused attempt before
    injected: Counter[str] = field(default_factory=Counter)
    unplanned_failures: Counter[str] = field(default_factory=Counter)  # error type -> count
    refused_zombie_commits: int = 0
    key_moves: int = 0
    zombies: int = 0
    zombie_writes: int = 0
    writes: Counter[str] = field(default_factory=Counter)
    failures_retried: bool = True  # every failed item was attempted again and committed
    uncommitted_items: int = 0
    timers_fired: int = 0
    timers_pending: int = 0
    elapsed_s: float = 0.0


@dataclass
class _Timer:
    domain: str
    fire_us: int
    hold_us: int
    encoded: bytes


@dataclass
class _Key:
    stage: int
    key: bytes
    worker: int
    lease: int = 0
    pending: deque[tuple[bytes, int]] = field(default_factory=deque)
    state: dict[bytes, bytes] = field(default_factory=dict)
    timers: dict[tuple[str, str, bytes], _Timer] = field(default_factory=dict)
    busy: int | None = None  # the attempt in flight (not a zombie)
    retry: _Item | None = None


@dataclass
class _Item:
    id: int
    stage: int
    keys: list[bytes]
    elements: list[tuple[bytes, list[tuple[bytes, int]]]]
    timers: list[tuple[bytes, tuple[str, str, bytes], _Timer]]
    attempts: list[int] = field(default_factory=list)
    failed: int = 0  # failed or refused attempts
    unplanned: int = 0
    injected: int = 0
    zombie: int | None = None  # a held zombie attempt to release once this item commits
    committed: bool = False


@dataclass
class _Attempt:
    id: int
    item: _Item
    worker: int
    leases: dict[bytes, int]
    plan: FaultPlan
    revoked_at: float | None = None
    done: bool = False
    commits_to_wait: int = 0  # a held zombie: commits of its key before it is released
    release_at: float | None = None  # a held zombie: released by then (set at the retry's commit)


class Coordinator:
    """Runs a graph's stages on worker processes over fed inputs (see the module docstring)."""

    def __init__(self, graph: Graph, config: ModelConfig, log_path: Path | None = None) -> None:
        if config.workers < 1 or config.threads < 1:
            raise ValueError("workers and threads must be at least 1")
        self.graph = graph
        self.config = config
        self.stats = RunStats()
        self.write_log: list[Write] = []
        self.collected: dict[str, list[Any]] = {}  # step -> its committed outputs (``collect``)
        self._rng = random.Random(config.seed)
        self._keys: dict[tuple[int, bytes], _Key] = {}
        self._items: dict[int, _Item] = {}
        self._attempts: dict[int, _Attempt] = {}
        self._inflight = [0] * config.workers
        self._zombies_on = [0] * config.workers
        self._ready: list[dict[int, deque[bytes]]] = [{} for _ in range(config.workers)]
        self._timer_heap: list[tuple[int, int, int, bytes]] = []
        self._event_timers = 0
        self._next_id = 0
        self._seen_writes: dict[int, set[str]] = {s.id: set() for s in graph.stages}
        self._log = log_path.open("w") if log_path else None
        self._upstream = {s.id: graph.upstream(s.id) for s in graph.stages}
        self._feed: deque[SourceBatch] = deque()
        self._feed_min_us: list[int] = []
        self._fed = 0
        self._drained = False
        self._pending = 0  # elements waiting in every stage (the backlog)
        self._waiting_retries = 0
        self._running_zombies = 0
        self._timer_keys: set[tuple[int, bytes]] = set()
        self._watermarks: dict[int, int] = {}
        self._watermarks_at = 0.0
        self._rotation = 0
        self._held: dict[tuple[int, bytes], list[_Attempt]] = {}  # key -> zombies waiting

    # -- the run -------------------------------------------------------------------------------

    def run(self, feed: Iterable[SourceBatch]) -> RunStats:
        """Runs until every input element is processed and committed (see ``timer_drain_s``)."""
        self._feed = deque(feed)
        times = [min((t for _, t in b.elements), default=_END_OF_TIME_US) for b in self._feed]
        suffix = _END_OF_TIME_US
        self._feed_min_us = [0] * len(times)
        for i in range(len(times) - 1, -1, -1):
            suffix = min(suffix, times[i])
            self._feed_min_us[i] = suffix
        started = time.monotonic()
        context = multiprocessing.get_context("spawn")
        self._outbox = context.Queue()
        self._inboxes = [context.Queue() for _ in range(self.config.workers)]
        graph_bytes = pickle.dumps(self.graph)
        self._processes = [
            context.Process(
                target=worker_main,
                args=(
                    w,
                    self.config.threads,
                    graph_bytes,
                    self._inboxes[w],
                    self._outbox,
                    self.config.extra_writes,
                ),
                daemon=True,
            )
            for w in range(self.config.workers)
        ]
        for process in self._processes:
            process.start()
        try:
            self._await_ready()
            for stage in self.graph.stages:
                if stage.kind == IMPULSE:
                    self._add_elements(stage.id, b"impulse", [(b"", 0)])
            deadline = started + self.config.timeout_s
            while not self._finished():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the run did not finish within {self.config.timeout_s} s")
                self._feed_inputs()
                self._release_zombies()
                self._fire_due_timers()
                self._dispatch()
                self._receive(timeout=0.02)
        finally:
            self._shutdown()
            if self._log is not None:
                self._log.close()
        self._account()
        self.stats.elapsed_s = round(time.monotonic() - started, 1)
        return self.stats

    def _await_ready(self) -> None:
        ready: set[int] = set()
        deadline = time.monotonic() + self.config.start_timeout_s
        while len(ready) < self.config.workers:
            self._check_workers()
            if time.monotonic() > deadline:
                raise TimeoutError("the worker processes did not start")
            try:
                message = self._outbox.get(timeout=0.5)
            except queue.Empty:
                continue
            if message[0] == "ready":
                ready.add(message[1])

    def _check_workers(self) -> None:
        for w, process in enumerate(self._processes):
            if not process.is_alive():
                raise RuntimeError(f"worker process {w} died (exit code {process.exitcode})")

    def _shutdown(self) -> None:
        for attempt in self._attempts.values():
            if attempt.revoked_at is not None and not attempt.done:
                self._inboxes[attempt.worker].put(("release", attempt.id))
        for inbox in self._inboxes:
            inbox.put(("stop",))
        for process in self._processes:
            process.join(timeout=60)
            if process.is_alive():
                process.terminate()

    def _finished(self) -> bool:
        if self._feed or any(self._inflight) or self._running_zombies:
            return False
        if self._waiting_retries or self._pending:
            return False
        horizon = int((time.time() + self.config.timer_drain_s) * 1e6)
        for stage_key in self._timer_keys:
            for timer in self._keys[stage_key].timers.values():
                if timer.domain == TimeDomain.WATERMARK:
                    self._drained = True  # nothing else can move the watermark: drain
                    return False
                if timer.fire_us <= horizon:
                    return False
        return True

    # -- inputs and timers ---------------------------------------------------------------------

    def _feed_inputs(self) -> None:
        while self._feed and self._pending + sum(self._inflight) < self.config.backlog:
            batch = self._feed.popleft()
            self._fed += 1
            stage = self.graph.stage_of_input(batch.input)
            self._add_elements(stage.id, f"src:{self._fed}".encode(), batch.elements)

    def _add_elements(self, stage: int, key: bytes, elements: Iterable[tuple[bytes, int]]) -> None:
        state = self._key(stage, key)
        before = len(state.pending)
        state.pending.extend(elements)
        self._pending += len(state.pending) - before
        self._mark_ready(state)

    def _key(self, stage: int, key: bytes) -> _Key:
        found = self._keys.get((stage, key))
        if found is None:
            worker = zlib.crc32(key) % self.config.workers
            found = self._keys[(stage, key)] = _Key(stage, key, worker)
        return found

    def _mark_ready(self, state: _Key) -> None:
        self._ready[state.worker].setdefault(state.stage, deque()).append(state.key)

    def _watermark_us(self, stage: int) -> int:
        """The stage's input watermark (see the module docstring)."""
        if self._drained:
            return _END_OF_TIME_US
        wm = self._feed_min_us[self._fed] if self._fed < len(self._feed_min_us) else _END_OF_TIME_US
        stages = self._upstream[stage] | {stage}
        for (sid, _), k in self._keys.items():
            if sid not in stages:
                continue
            if k.pending:
                wm = min(wm, min(t for _, t in k.pending))
            if k.retry is not None:
                wm = min(wm, min((t for _, es in k.retry.elements for _, t in es), default=wm))
            if sid != stage:
                for timer in k.timers.values():
                    if timer.domain == TimeDomain.WATERMARK:
                        wm = min(wm, timer.hold_us)
        for attempt in self._attempts.values():
            if not attempt.done and attempt.item.stage in stages:
                for _, elements in attempt.item.elements:
                    wm = min(wm, min((t for _, t in elements), default=wm))
        return wm

    def _fire_due_timers(self) -> None:
        """Marks ready the keys with a processing-time timer due (and, with event-time timers
        set, every key whose stage's watermark passed one)."""
        now_us = int(time.time() * 1e6)
        while self._timer_heap and self._timer_heap[0][0] <= now_us:
            _, _, stage, key = heapq.heappop(self._timer_heap)
            state = self._keys.get((stage, key))
            if state is not None:
                self._mark_ready(state)
        if self._event_timers:
            for stage_key in list(self._timer_keys):
                state = self._keys[stage_key]
                if any(
                    t.domain == TimeDomain.WATERMARK and t.fire_us <= self._watermark(state.stage)
                    for t in state.timers.values()
                ):
                    self._mark_ready(state)

    def _watermark(self, stage: int) -> int:
        """``_watermark_us``, recomputed at most every 0.5 s (it scans every key)."""
        if time.monotonic() - self._watermarks_at > 0.5 or self._drained:
            self._watermarks = {}
            self._watermarks_at = time.monotonic()
        if stage not in self._watermarks:
            self._watermarks[stage] = self._watermark_us(stage)
        return self._watermarks[stage]

    def _due_timers(self, state: _Key) -> list[tuple[bytes, tuple[str, str, bytes], _Timer]]:
        now_us = int(time.time() * 1e6)
        due = []
        watermark: int | None = None
        for tkey, timer in state.timers.items():
            if timer.domain == TimeDomain.WATERMARK:
                if watermark is None:
                    watermark = self._watermark(state.stage)
                if timer.fire_us > watermark:
                    continue
            elif timer.fire_us > now_us:
                continue
            due.append((state.key, tkey, timer))
        return due

    # -- dispatch ------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        self._rotation += 1
        for worker in range(self.config.workers):
            lines = self._ready[worker]
            order = list(lines)
            for i in range(len(order)):
                stage = order[(i + self._rotation) % len(order)]
                line = lines[stage]
                while line and self._has_capacity(worker):
                    item = self._next_item(worker, stage, line)
                    if item is None:
                        break
                    self._start(item, worker)
                if not line:
                    del lines[stage]
                if not self._has_capacity(worker):
                    break

    def _has_capacity(self, worker: int) -> bool:
        return self._inflight[worker] + self._zombies_on[worker] < self.config.threads

    def _next_item(self, worker: int, stage: int, line: deque[bytes]) -> _Item | None:
        """A work item from the keys waiting in ``line`` (those of ``worker`` and ``stage``)."""
        limit = self.config.keys_per_item if self.config.multi_key else 1
        keys: list[_Key] = []
        seen: set[bytes] = set()
        scanned = 0
        while line and len(keys) < limit and scanned < 4 * limit + 16:
            scanned += 1
            key = line.popleft()
            state = self._keys.get((stage, key))
            if state is None or key in seen or state.busy is not None:
                continue
            if state.worker != worker:
                self._mark_ready(state)
                continue
            if state.retry is not None:
                if not keys:
                    return self._retry_item(state)
                line.append(key)  # a retry runs alone, as it ran the first time
                continue
            if not state.pending and not self._due_timers(state):
                continue
            seen.add(key)
            keys.append(state)
        if not keys:
            return None
        self._next_id += 1
        elements = []
        timers: list[tuple[bytes, tuple[str, str, bytes], _Timer]] = []
        for state in keys:
            take = min(len(state.pending), self.config.elements_per_item)
            elements.append((state.key, [state.pending.popleft() for _ in range(take)]))
            self._pending -= take
            timers += self._due_timers(state)
            if state.pending:
                line.append(state.key)
        item = _Item(self._next_id, stage, [s.key for s in keys], elements, timers)
        self._items[item.id] = item
        return item

    def _retry_item(self, state: _Key) -> _Item | None:
        item = state.retry
        assert item is not None
        states = [self._keys[(item.stage, k)] for k in item.keys]
        if any(s.busy is not None for s in states):
            return None
        for s in states:
            s.retry = None
        self._waiting_retries -= 1
        return item

    def _plan(self, item: _Item, worker: int) -> FaultPlan:
        rates = self.config.fail_rates
        if item.injected < self.config.max_injected_per_item:
            seen = self._seen_writes[item.stage]
            for point in INJECTION_POINTS:
                if (point == BEFORE_COMMIT or point in seen) and self._rng.random() < rates.get(
                    point, 0.0
                ):
                    return FaultPlan(fail_after=point)
            if (
                self.config.workers > 1
                and item.zombie is None
                and self._seen_writes[item.stage]
                and self._zombies_on[worker] < self.config.threads - 1
                and self._rng.random() < self.config.zombie_rate
            ):
                return FaultPlan(zombie=True)
        return FaultPlan()

    def _start(self, item: _Item, worker: int) -> None:
        self._next_id += 1
        plan = self._plan(item, worker)
        leases = {}
        state_cells: dict[bytes, bytes] = {}
        for key in item.keys:
            state = self._keys[(item.stage, key)]
            state.busy = self._next_id
            leases[key] = state.lease
            state_cells.update(state.state)
        attempt = _Attempt(self._next_id, item, worker, leases, plan)
        self._attempts[attempt.id] = attempt
        if item.attempts:
            self.stats.retries += 1
        item.attempts.append(attempt.id)
        self.stats.attempts += 1
        self._inflight[worker] += 1
        message = WorkItem(
            item.id,
            attempt.id,
            item.stage,
            [(key, [e for e, _ in elements]) for key, elements in item.elements],
            [(key, tkey[0], timer.encoded) for key, tkey, timer in item.timers],
            state_cells,
            plan,
        )
        self._inboxes[worker].put(("item", message))

    # -- results -------------------------------------------------------------------------------

    def _receive(self, timeout: float) -> None:
        try:
            message = self._outbox.get(timeout=timeout)
        except queue.Empty:
            self._check_workers()
            return
        while True:
            if message[0] == "result":
                self._on_result(message[1])
            elif message[0] == "held":
                self._on_held(message[1])
            try:
                message = self._outbox.get_nowait()
            except queue.Empty:
                return

    def _on_held(self, attempt_id: int) -> None:
        """A zombie's first write is waiting: its keys move, its lease is revoked, and the same
        work item is retried elsewhere; the write goes ahead once the retry committed."""
        attempt = self._attempts[attempt_id]
        item = attempt.item
        attempt.revoked_at = time.time()
        self.stats.zombies += 1
        self._inflight[attempt.worker] -= 1
        self._zombies_on[attempt.worker] += 1
        self._running_zombies += 1
        others = [w for w in range(self.config.workers) if w != attempt.worker]
        target = self._rng.choice(others)
        for key in item.keys:
            state = self._keys[(item.stage, key)]
            state.lease += 1
            state.busy = None
        self._move(item, target)
        item.zombie = attempt.id
        attempt.commits_to_wait = self.config.zombie_release_after
        self._held.setdefault((item.stage, item.keys[0]), []).append(attempt)
        self._requeue(item)
        self._record(attempt, "held", "")

    def _release_zombies(self) -> None:
        """Releases the held zombies whose time is up; all of them once nothing else runs
        (their keys' next work item is not coming)."""
        idle = not any(self._inflight) and not self._pending and not self._waiting_retries
        now = time.monotonic()
        for key, zombies in list(self._held.items()):
            for zombie in list(zombies):
                if idle or (zombie.release_at is not None and now >= zombie.release_at):
                    self._release(key, zombie)

    def _release(self, key: tuple[int, bytes], zombie: _Attempt) -> None:
        self._held[key].remove(zombie)
        if not self._held[key]:
            del self._held[key]
        self._inboxes[zombie.worker].put(("release", zombie.id))

    def _on_result(self, result: AttemptResult) -> None:
        attempt = self._attempts[result.attempt_id]
        attempt.done = True
        item = attempt.item
        self.write_log.extend(result.writes)
        if attempt.revoked_at is not None:  # a zombie: its commit is refused
            self._zombies_on[attempt.worker] -= 1
            self._running_zombies -= 1
            self.stats.refused_zombie_commits += 1
            self._record(attempt, "zombie refused", result.error)
            return
        self._inflight[attempt.worker] -= 1
        for key in item.keys:
            self._keys[(item.stage, key)].busy = None
        if not result.ok:
            item.failed += 1
            if result.injected:
                item.injected += 1
                self.stats.injected[result.injected] += 1
            else:
                item.unplanned += 1
                kind = result.error.split(":", 1)[0].split("\n", 1)[0]
                self.stats.unplanned_failures[kind] += 1
                _LOGGER.warning("attempt %d failed: %s", attempt.id, result.error)
                if item.unplanned > self.config.max_failures_per_item:
                    raise RuntimeError(
                        f"work item {item.id} failed {item.unplanned} times: {result.error}"
                    )
            self._record(attempt, "failed", result.error)
            self._retry(item)
            return
        if result.ok:
            for write in result.writes:
                self._seen_writes[item.stage].add(write.kind)
        lost_lease = any(
            self._keys[(item.stage, key)].lease != lease for key, lease in attempt.leases.items()
        )
        if attempt.plan.fail_after == BEFORE_COMMIT or lost_lease:
            item.failed += 1
            if not lost_lease:
                item.injected += 1
                self.stats.injected[BEFORE_COMMIT] += 1
            self._record(attempt, "commit refused", "")
            self._retry(item)
            return
        self._commit(item, result)
        self._record(attempt, "committed", "", result)

    def _retry(self, item: _Item) -> None:
        if self.config.workers > 1 and self._rng.random() < self.config.retry_elsewhere:
            current = self._keys[(item.stage, item.keys[0])].worker
            self._move(
                item, self._rng.choice([w for w in range(self.config.workers) if w != current])
            )
        self._requeue(item)

    def _requeue(self, item: _Item) -> None:
        """The work item runs again before anything else of its keys."""
        for key in item.keys:
            self._keys[(item.stage, key)].retry = item
        self._waiting_retries += 1
        self._mark_ready(self._keys[(item.stage, item.keys[0])])

    def _move(self, item: _Item, worker: int) -> None:
        """The item's keys go to ``worker`` (their leases change; an input's work item has no
        key to move, only a worker to run on)."""
        for key in item.keys:
            state = self._keys[(item.stage, key)]
            if state.worker != worker:
                state.worker = worker
                state.lease += 1
                if self.graph.stages[item.stage].keyed:
                    self.stats.key_moves += 1
            self._mark_ready(state)

    def _commit(self, item: _Item, result: AttemptResult) -> None:
        item.committed = True
        self.stats.work_items += 1
        for key in item.keys:
            state = self._keys[(item.stage, key)]
            for cell, value in result.state.get(key, {}).items():
                if value is None:
                    state.state.pop(cell, None)
                else:
                    state.state[cell] = value
        for key, tkey, fired in item.timers:
            state = self._keys[(item.stage, key)]
            if state.timers.get(tkey) is fired:
                del state.timers[tkey]
                if not state.timers:
                    self._timer_keys.discard((item.stage, key))
                self.stats.timers_fired += 1
                if fired.domain == TimeDomain.WATERMARK:
                    self._event_timers -= 1
        for change in result.timers:
            self._apply_timer(item.stage, change)
        for target, key, encoded, ts_us in result.outputs:
            if target == COLLECTED:
                pcoll = key.decode()
                value = windowed_coder(self.graph, pcoll).decode(encoded).value
                self.collected.setdefault(self.graph.collected[pcoll], []).append(value)
            else:
                self._add_elements(target, key, [(encoded, ts_us)])
        for key in item.keys:
            state = self._keys[(item.stage, key)]
            if not self.graph.stages[item.stage].keyed:  # an input's work item: done
                del self._keys[(item.stage, key)]
                continue
            if state.pending or state.timers:
                self._mark_ready(state)
        for key in item.keys:
            for zombie in list(self._held.get((item.stage, key), ())):
                if zombie.item is item:
                    zombie.release_at = time.monotonic() + self.config.zombie_hold_s
                zombie.commits_to_wait -= 1
                if zombie.commits_to_wait <= 0:
                    self._release((item.stage, key), zombie)
        if (
            self.config.workers > 1
            and self.graph.stages[item.stage].keyed
            and self._rng.random() < self.config.move_rate
        ):
            current = self._keys[(item.stage, item.keys[0])].worker
            self._move(
                item, self._rng.choice([w for w in range(self.config.workers) if w != current])
            )

    def _apply_timer(self, stage: int, change: TimerChange) -> None:
        state = self._key(stage, change.key)
        tkey = (change.family, change.tag, change.window)
        previous = state.timers.pop(tkey, None)
        if previous is not None and previous.domain == TimeDomain.WATERMARK:
            self._event_timers -= 1
        if change.clear:
            if not state.timers:
                self._timer_keys.discard((stage, change.key))
            return
        domain = self.graph.steps[self.graph.stages[stage].entry].timer_domains[change.family]
        timer = _Timer(domain, change.fire_us, change.hold_us, change.encoded)
        state.timers[tkey] = timer
        self._timer_keys.add((stage, change.key))
        if domain == TimeDomain.WATERMARK:
            self._event_timers += 1
        else:
            heapq.heappush(self._timer_heap, (change.fire_us, id(timer), stage, change.key))

    # -- accounting ----------------------------------------------------------------------------

    def _record(
        self, attempt: _Attempt, outcome: str, error: str, result: AttemptResult | None = None
    ) -> None:
        if self._log is None:
            return
        stage = self.graph.stages[attempt.item.stage]
        keys = [self._show_key(stage.id, k) for k in attempt.item.keys]
        entry = {
            "attempt": attempt.id,
            "item": attempt.item.id,
            "try": attempt.item.attempts.index(attempt.id) + 1,
            "stage": stage.name,
            "keys": keys[:5] + ([f"+{len(keys) - 5}"] if len(keys) > 5 else []),
            "worker": attempt.worker,
            "elements": sum(len(elements) for _, elements in attempt.item.elements),
            "timers": len(attempt.item.timers),
            "plan": attempt.plan.fail_after or ("zombie" if attempt.plan.zombie else ""),
            "outcome": outcome,
        }
        if error:
            entry["error"] = error.splitlines()[0][:300]
        if result is not None:
            entry["seconds"] = round(result.seconds, 6)  # the attempt's time in its worker
        if result is not None and result.outputs:
            sent = [
                f"{self.graph.stages[t].name.rsplit('/', 1)[-1]}:{self._show_key(t, k)}"
                for t, k, _, _ in result.outputs
                if t != COLLECTED
            ]
            entry["outputs"] = sent[:10] + ([f"+{len(sent) - 10}"] if len(sent) > 10 else [])
        self._log.write(json.dumps(entry) + "\n")

    def _show_key(self, stage: int, key: bytes) -> str:
        if self.graph.stages[stage].kind in (SOURCE, IMPULSE):
            return key.decode(errors="replace")
        coder = self.graph.key_coder(self.graph.stages[stage].input)
        try:
            return str(coder.decode_nested(key))
        except Exception:  # a key that is not text: show its bytes
            return key.hex()

    def _account(self) -> None:
        revoked = {a.id: a.revoked_at for a in self._attempts.values() if a.revoked_at is not None}
        for write in self.write_log:
            self.stats.writes[write.kind] += 1
            at = revoked.get(write.attempt_id)
            if at is not None and write.started > at:
                self.stats.zombie_writes += 1
        failed = [i for i in self._items.values() if i.failed]
        self.stats.failures_retried = all(
            i.committed and len(i.attempts) >= i.failed + 1 + (i.zombie is not None) for i in failed
        )
        self.stats.uncommitted_items = sum(1 for i in self._items.values() if not i.committed)
        self.stats.timers_pending = sum(len(k.timers) for k in self._keys.values())
