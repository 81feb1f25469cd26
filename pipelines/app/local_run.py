"""LocalRun: the one local orchestration (stack, resources, job, replay, wait) behind the demo,
replay-eval, the benches and the tests.

    with LocalRun(work / "stack") as run:           # private emulators on free ports
        run.start_job([f"--model_dir={models}"])    # child process (or start_pipeline: in-process)
        run.replay(events, rate=400, first_alone=True)
        elapsed = run.wait_predicted(n_transactions, timeout_s=600)
        p50, p95, p99 = percentiles(run.latencies())

On exit it stops what it started, and only that: the job (or cancels the in-process pipeline),
the monitor threads, the stack if it brought it up. A job that exits on its own is noticed by
every wait (``StreamingJob.check``), which then raises with the job's log.

The child job is a process, not a thread: the DirectRunner's streaming mode runs until cancelled,
keeps process-wide state (clients, caches) and its log is the user's first stop when something
fails. In-process runs are for the benches, which read in-process counters.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.app.job_lock import hold_table_lock
from pipelines.app.local import (
    DEFAULT_PORTS,
    LocalStack,
    Topology,
    create_resources,
    create_subscription,
    environment,
    free_port,
)
from pipelines.app.publisher import Rate, publish_events

__all__ = ["LocalRun", "Monitor", "StreamingJob", "latency_ms", "percentiles", "wait_until"]


class StreamingJob:
    """``python -m pipelines.main`` (DirectRunner) with ``args`` as a child process logging to
    ``log_path`` (appended to: a restart after ``kill`` continues it)."""

    def __init__(self, args: Sequence[str], log_path: Path) -> None:
        self.args = list(args)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StreamingJob:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pipelines.main", "--runner=DirectRunner", *self.args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)
            )
        return self

    def check(self) -> None:
        """Raises if the job has exited (a streaming job only ends when stopped)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"the streaming pipeline exited ({self.proc.returncode}); see {self.log_path}"
            )

    def kill(self) -> None:
        """SIGKILL, no chance to clean up (a crash, for chaos testing); waits for the exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """Terminates the job, then kills it if it is still there after 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class Monitor:
    """Drains a monitoring subscription in a thread, keeping the messages (``raw``) and their
    JSON bodies (``received``; ``{"_raw": bytes}`` for a body that is not JSON)."""

    subscription: str
    received: list[dict[str, Any]] = field(default_factory=list)
    raw: list[Any] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from google.cloud import pubsub_v1

        subscriber = pubsub_v1.SubscriberClient()
        try:
            while not self.stop.is_set():
                with warnings.catch_warnings():  # return_immediately is deprecated, yet returns
                    warnings.simplefilter("ignore", DeprecationWarning)  # at once on the emulator
                    response = subscriber.pull(
                        subscription=self.subscription, max_messages=1000, return_immediately=True
                    )
                if not response.received_messages:
                    time.sleep(0.2)
                    continue
                for m in response.received_messages:
                    self.raw.append(m.message)
                    try:
                        self.received.append(json.loads(m.message.data))
                    except (ValueError, RecursionError):  # dead letters hold any bytes
                        self.received.append({"_raw": m.message.data})
                subscriber.acknowledge(
                    subscription=self.subscription,
                    ack_ids=[m.ack_id for m in response.received_messages],
                )
        finally:
            subscriber.close()


def percentiles(values: list[float]) -> tuple[float, float, float]:
    """p50, p95, p99 (NaN when empty)."""
    if not values:
        return (float("nan"), float("nan"), float("nan"))
    p = np.percentile(np.asarray(values), [50, 95, 99])
    return float(p[0]), float(p[1]), float(p[2])


def latency_ms(prediction: dict[str, Any]) -> float | None:
    """Event-to-prediction latency of a prediction message: processing - publish time."""
    from pipelines.core.schema import parse_rfc3339

    try:
        return (
            parse_rfc3339(prediction["processing_time"]) - parse_rfc3339(prediction["publish_time"])
        ) / 1000.0
    except (KeyError, ValueError):
        return None


def wait_until(
    done: Callable[[], bool],
    timeout_s: float,
    what: str | Callable[[], str],
    check: Callable[[], None] | None = None,
    poll_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    start: float | None = None,
) -> float:
    """Polls ``done()`` every ``poll_s`` (``check()`` first, to raise if the job died) until it
    is true; returns the seconds since ``start`` (default: now). Raises TimeoutError "<what>
    within <timeout_s> s" (``what`` may be a function: the state at the timeout)."""
    start = clock() if start is None else start
    while True:
        if check is not None:
            check()
        if done():
            return clock() - start
        if clock() - start >= timeout_s:
            raise TimeoutError(f"{what() if callable(what) else what} within {timeout_s:.0f} s")
        sleep(poll_s)


class LocalRun:
    """A run of the streaming job on the emulators, as a context manager.

    The stack: ``stack`` if given (already up: reused, never stopped), else a ``LocalStack`` in
    ``state_dir`` brought up on free loopback ports (``private``, nothing a user runs is touched)
    or on its recorded ports (``private=False``, reusing emulators that answer), and brought down
    on exit. Inside the block the emulator environment is set and the resources exist.

    ``fresh="tag"`` gives this run its own input, prediction and dead-letter subscriptions, table
    and Datastore kind (named after the tag, with a random suffix), so that runs on one stack do
    not see each other's messages or state; ``job_args()`` points the job at them.

    The job: ``start_job`` (a child process, ``StreamingJob``: its own log, can be killed and
    restarted) or ``start_pipeline`` (in this process: in-process counters stay readable). Either
    starts the ``predictions`` and ``dead_letters`` monitors. ``replay`` publishes in a thread,
    ``wait_predicted``/``wait_for`` wait while watching the job.
    """

    def __init__(
        self,
        state_dir: str | Path = ".rillet",
        *,
        stack: LocalStack | None = None,
        private: bool = True,
        fresh: str = "",
        log_path: Path | None = None,
    ) -> None:
        self.stack = stack or LocalStack(state_dir)
        self._owns_stack = stack is None
        self._ports = {n: free_port() for n in DEFAULT_PORTS} if private else None
        self.fresh = fresh
        self.topology = Topology()
        self.datastore_kind = "Prediction"
        self.log_path = log_path or self.stack.state_dir / "logs" / "pipeline.log"
        self.env: dict[str, str] = {}
        self.started: dict[str, str] = {}  # LocalStack.up's answer (what it started)
        self.stopped: dict[str, str] = {}  # LocalStack.down's answer
        self.job: StreamingJob | None = None
        self.result: Any = None  # the in-process pipeline's PipelineResult
        self._snapshot: Any = None  # its SnapshotWriter (with --monitor_dir)
        # Made on entering (their subscriptions may be fresh); pulling once a job starts.
        self.predictions: Monitor
        self.dead_letters: Monitor
        self._monitor_threads: list[threading.Thread] = []
        self._publisher: threading.Thread | None = None
        self._replay_start: float | None = None
        self._exit = ExitStack()
        # The feature table's job lock, from the first start_job to stop(): as for 'rillet run',
        # one local job per table (a demo's job and a 'rillet run' in another terminal).
        self._table_lock: ExitStack | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> LocalRun:
        try:
            if self._owns_stack:
                self.started = self.stack.up(self._ports)
                self._exit.callback(self._down)
            self.env = self.stack.env()
            self._exit.enter_context(environment(self.env))
            create_resources(self.topology)
            if self.fresh:
                self._create_fresh(self.fresh)
            prefix = f"projects/{self.topology.project}/subscriptions/"
            self.predictions = Monitor(prefix + self.topology.predictions_subscription)
            self.dead_letters = Monitor(prefix + self.topology.dead_letter_subscription)
            # Last in, first out: the job and monitors stop before the stack (registered first).
            self._exit.callback(self.stop)
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    def _down(self) -> None:
        # Only what this run started: emulators it found answering ('rillet local up') stay.
        self.stopped = self.stack.down(only=[n for n, w in self.started.items() if w == "started"])

    def _create_fresh(self, tag: str) -> None:
        from pipelines.stores.bigtable import StoreConfig, create_table

        topo, suffix = self.topology, uuid.uuid4().hex[:6]
        names = {
            "transactions_subscription": (f"{tag}-tx-{suffix}", topo.transactions_topic),
            "labels_subscription": (f"{tag}-lb-{suffix}", topo.labels_topic),
            "predictions_subscription": (f"{tag}-out-{suffix}", topo.predictions_topic),
            "dead_letter_subscription": (f"{tag}-dl-{suffix}", topo.dead_letter_topic),
        }
        for name, topic in names.values():
            create_subscription(topo.project, name, topic)
        table = f"{tag}_{suffix}".replace("-", "_")
        self.topology = dataclasses.replace(
            topo, bigtable_table=table, **{k: name for k, (name, _) in names.items()}
        )
        self.datastore_kind = f"Run_{table}"
        create_table(StoreConfig(topo.project, topo.bigtable_instance, table))

    # -- the job ----------------------------------------------------------------------------

    def job_args(self) -> list[str]:
        """The job's options that point it at this run's resources (and its monitoring
        snapshot at ``<state dir>/monitor``: ``rillet monitor --monitor-dir`` shows it)."""
        args = [f"--project={self.topology.project}", f"--monitor_dir={self.monitor_dir}"]
        if self.fresh:
            t = self.topology
            args += [
                f"--transactions_subscription={t.transactions_subscription}",
                f"--labels_subscription={t.labels_subscription}",
                f"--bigtable_table={t.bigtable_table}",
                f"--datastore_kind={self.datastore_kind}",
            ]
        return args

    @property
    def monitor_dir(self) -> Path:
        """Where the job writes its monitoring snapshot (docs/specs/monitoring.md)."""
        return self.stack.state_dir / "monitor"

    def start_job(self, args: Sequence[str] = ()) -> StreamingJob:
        """Starts ``python -m pipelines.main`` (DirectRunner) as a child process logging to
        ``log_path``, with ``job_args()`` and ``args``. ``job.start()`` restarts it after a
        kill (the log is appended to)."""
        argv = [*self.job_args(), *args]
        if self._table_lock is None:
            tables = [a.split("=", 1)[1] for a in argv if a.startswith("--bigtable_table=")]
            topo = self.topology
            table = tables[-1] if tables else topo.bigtable_table
            lock = ExitStack()
            lock.enter_context(
                hold_table_lock(self.stack.state_dir, topo.project, topo.bigtable_instance, table)
            )
            self._table_lock = lock
        self.job = StreamingJob(argv, self.log_path).start()
        self.watch()
        return self.job

    def start_pipeline(
        self, args: Sequence[str] = (), build: Callable[[Any, Any], Any] | None = None
    ) -> Any:
        """Runs the streaming pipeline in this process (DirectRunner, tuned as the job is;
        ``job_args()`` and ``args``); ``build(p, options)`` builds the graph (default: the real
        one). Returns the PipelineResult; it is cancelled on exit."""
        import apache_beam as beam

        from pipelines.local_runner import tune_direct_runner
        from pipelines.local_runner.pubsub_pull import pull_stats
        from pipelines.main import pipeline_options, start_snapshot
        from pipelines.options import RilletOptions
        from pipelines.streaming import build_pipeline

        options = pipeline_options(["--runner=DirectRunner", *self.job_args(), *args])
        tune_direct_runner(options.view_as(RilletOptions).direct_pull_max_messages)
        p = beam.Pipeline(options=options)
        (build or build_pipeline)(p, options)
        self.watch()
        pull_stats().reset()  # an earlier in-process pipeline's pulls are not this one's
        self.result = p.run()
        self._snapshot = start_snapshot(self.result, options)
        return self.result

    def restart_job(self) -> None:
        """Kills the child job (SIGKILL: a crash) and starts it again with the same arguments;
        with ``--recovery_checkpoint`` it resumes where its predecessor was."""
        assert self.job is not None, "start_job first"
        self.job.kill()
        self.job.start()

    def check(self) -> None:
        """Raises if the child job has exited (a streaming job only ends when stopped)."""
        if self.job is not None:
            self.job.check()

    def sleep(self, seconds: float) -> None:
        """Sleeps, checking the child job every 0.2 s (it must not die meanwhile)."""
        end = time.monotonic() + seconds
        self.wait_for(lambda: time.monotonic() >= end, math.inf, "", poll_s=0.2)

    def stop(self, settle_s: float = 0.0) -> None:
        """After ``settle_s`` (for the last messages and store writes to land), stops the child
        job or cancels the in-process pipeline, then the monitors (idempotent). The stack stays
        up until the block exits."""
        time.sleep(settle_s)
        if self.job is not None:
            self.job.stop()
        if self._table_lock is not None:
            self._table_lock.close()
            self._table_lock = None
        if self.result is not None:
            self.result.cancel()
            self.result = None
        if self._snapshot is not None:
            self._snapshot.stop()
            self._snapshot = None
        self.stop_monitors()

    def watch(self) -> None:
        """Starts the prediction and dead-letter monitors (done by start_job/start_pipeline;
        alone: to watch what something else publishes). Idempotent."""
        if self._monitor_threads or self.predictions.stop.is_set():
            return
        for monitor in (self.predictions, self.dead_letters):
            thread = threading.Thread(target=monitor.run, daemon=True)
            thread.start()
            self._monitor_threads.append(thread)

    def stop_monitors(self) -> None:
        """Stops the monitor threads (what they received stays readable)."""
        for monitor in (self.predictions, self.dead_letters):
            monitor.stop.set()
        for thread in self._monitor_threads:
            thread.join(timeout=10)
        self._monitor_threads = []

    def warm_store(
        self, data_dir: str | Path, output_dir: str | Path, until: str, args: Sequence[str] = ()
    ) -> Path:
        """Backfills the dataset in ``data_dir`` up to ``until`` (a date or an RFC 3339 time)
        into this run's feature table (``--to_bigtable``): the store as a job that had streamed
        everything before ``until`` would have left it. ``output_dir`` gets the backfill's
        manifest; ``args`` are more backfill options. Returns what run_backfill returns."""
        from pipelines.backfill.backfill import run_backfill

        topo = self.topology
        return run_backfill(
            str(data_dir),
            str(output_dir),
            [
                f"--until={until}",
                "--to_bigtable",
                f"--project={topo.project}",
                f"--bigtable_instance={topo.bigtable_instance}",
                f"--bigtable_table={topo.bigtable_table}",
                *args,
            ],
        )

    # -- input ------------------------------------------------------------------------------

    def publish(self, events: Sequence[Any], rate: Rate = 0, **kwargs: Any) -> int:
        """Publishes now, in this thread (``publish_events``' other arguments pass through)."""
        return publish_events(events, self.topology.topic_paths(), rate, **kwargs)

    def replay(
        self,
        events: Sequence[Any],
        rate: Rate = 0,
        *,
        first_alone: bool = False,
        first_timeout_s: float = 600.0,
        **kwargs: Any,
    ) -> None:
        """Publishes ``events`` at ``rate`` in a thread (``wait_predicted`` waits for it too;
        ``kwargs`` go to ``publish_events``). ``first_alone``: the first event alone, until its
        prediction is out: the job's start-up (model load, clients) then delays one message
        instead of the first seconds of the replay."""
        self._replay_start = time.monotonic()
        if first_alone and events:
            self.publish(events[:1])
            self.wait_for(lambda: self.predicted() > 0, first_timeout_s, "no first prediction")
            events = events[1:]
        self._publisher = threading.Thread(
            target=self.publish, args=(events, rate), kwargs=kwargs, daemon=True
        )
        self._publisher.start()

    def replaying(self) -> bool:
        """Whether the replay thread is still publishing."""
        return self._publisher is not None and self._publisher.is_alive()

    # -- waiting and results ----------------------------------------------------------------

    def wait_for(
        self,
        done: Callable[[], bool],
        timeout_s: float,
        what: str | Callable[[], str],
        poll_s: float = 0.5,
        start: float | None = None,
    ) -> float:
        """``wait_until`` with the job checked at every poll; the TimeoutError names its log."""
        try:
            return wait_until(done, timeout_s, what, self.check, poll_s, start=start)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; see {self.log_path}" if self.job else str(exc)) from None

    def predicted(self) -> int:
        """Distinct transaction ids seen on the prediction topic."""
        return len({p.get("transaction_id") for p in list(self.predictions.received)})

    def wait_predicted(
        self,
        n: int,
        timeout_s: float,
        *,
        dead_letters: int = 0,
        progress: Callable[[int], None] | None = None,
        poll_s: float = 0.5,
    ) -> float:
        """Waits until ``n`` distinct transactions are predicted, the replay is published and
        ``dead_letters`` dead letters are out. The timeout and the returned seconds count from
        the replay's start (from now without a replay). TimeoutError names the job's log."""

        def done() -> bool:
            got = self.predicted()
            if progress is not None:
                progress(got)
            out = len(self.dead_letters.received)
            return got >= n and not self.replaying() and out >= dead_letters

        what = lambda: f"only {self.predicted():,} of {n:,} transactions were predicted"  # noqa: E731
        return self.wait_for(done, timeout_s, what, poll_s, self._replay_start)

    def corrections(self) -> int:
        """The prediction messages that are corrections (an earlier event arrived late)."""
        return sum(1 for p in self.predictions.received if p.get("correction"))

    def latencies(self, exclude: frozenset[str] = frozenset()) -> list[float]:
        """Event-to-prediction latencies (ms) of the original (non-correction) predictions,
        without the ``exclude`` transaction ids (e.g. the one that waited for the start-up)."""
        originals = (
            p
            for p in self.predictions.received
            if not p.get("correction") and p.get("transaction_id") not in exclude
        )
        return [x for x in map(latency_ms, originals) if x is not None]
