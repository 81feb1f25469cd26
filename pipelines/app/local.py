"""The local stack: the official Pub/Sub, Bigtable and Datastore emulators of the Google Cloud SDK.

``up`` starts each emulator on a loopback port, waits until it answers, records the pids it
started in ``<state_dir>/local.json`` and creates the topics, subscriptions and the feature table
(idempotently). ``down`` stops only the processes recorded there. An emulator already answering
on its port (started by someone else) is used but never stopped.

``pause``/``resume``/``outage`` simulate a dependency outage for chaos testing: SIGSTOP then
SIGCONT to every process of one emulator this stack started (its process group and any other
descendant). The emulators keep their data in memory (cbtemulator cannot persist at all), so
killing one would lose the store; a paused emulator keeps it, accepts TCP connections (the kernel
completes the handshake) but answers nothing, so every client call hangs until its deadline.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.options import LOCAL_PROJECT

_LOGGER = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PORTS",
    "LocalStack",
    "StackError",
    "Topology",
    "create_resources",
    "emulator_env",
    "environment",
    "free_port",
]

DEFAULT_PORTS = {"pubsub": 8085, "bigtable": 8086, "datastore": 8081}
ENV_VARS = {
    "pubsub": "PUBSUB_EMULATOR_HOST",
    "bigtable": "BIGTABLE_EMULATOR_HOST",
    "datastore": "DATASTORE_EMULATOR_HOST",
}
HOST = "127.0.0.1"
INSTALL_HINT = (
    "Install the Google Cloud SDK (https://cloud.google.com/sdk/docs/install) with its emulator "
    "components: gcloud components install pubsub-emulator bigtable cloud-datastore-emulator "
    "(or the Debian/RPM packages google-cloud-cli-pubsub-emulator, "
    "google-cloud-cli-cbt, google-cloud-cli-datastore-emulator), and Java 17 or newer."
)


class StackError(RuntimeError):
    """The local stack cannot start; the message says what to install or fix."""


@dataclass(frozen=True)
class Topology:
    """Names of the local resources (the same defaults as RilletOptions)."""

    project: str = LOCAL_PROJECT
    transactions_topic: str = "transactions"
    labels_topic: str = "labels"
    predictions_topic: str = "predictions"
    dead_letter_topic: str = "dead-letter"
    transactions_subscription: str = "transactions-rillet"
    labels_subscription: str = "labels-rillet"
    predictions_subscription: str = "predictions-monitor"
    dead_letter_subscription: str = "dead-letter-monitor"
    alerts_topic: str = "alerts"
    alerts_subscription: str = "alerts-monitor"
    bigtable_instance: str = "rillet"
    bigtable_table: str = "features"

    def topic_paths(self) -> dict[str, str]:
        """The input topics as the publisher wants them: stream name -> full topic path."""
        return {
            "transactions": f"projects/{self.project}/topics/{self.transactions_topic}",
            "labels": f"projects/{self.project}/topics/{self.labels_topic}",
        }

    def subscriptions(self) -> dict[str, str]:
        """Subscription -> topic."""
        return {
            self.transactions_subscription: self.transactions_topic,
            self.labels_subscription: self.labels_topic,
            self.predictions_subscription: self.predictions_topic,
            self.dead_letter_subscription: self.dead_letter_topic,
            self.alerts_subscription: self.alerts_topic,
        }


@dataclass
class _State:
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)


def sdk_root() -> Path:
    """The Cloud SDK's root folder, or StackError saying what to install."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise StackError(f"gcloud was not found on PATH. {INSTALL_HINT}")
    try:
        out = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError) as exc:
        raise StackError(f"'gcloud info' failed ({exc}). {INSTALL_HINT}") from exc
    return Path(out)


def _commands(root: Path, ports: dict[str, int], data_dir: Path) -> dict[str, list[str]]:
    platform = root / "platform"
    pubsub = platform / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
    bigtable = platform / "bigtable-emulator" / "cbtemulator"
    datastore = platform / "cloud-datastore-emulator" / "cloud_datastore_emulator"
    missing = [str(p) for p in (pubsub, bigtable, datastore) if not p.exists()]
    if missing:
        raise StackError(f"emulator(s) missing: {', '.join(missing)}. {INSTALL_HINT}")
    if shutil.which("java") is None:
        raise StackError(
            "java was not found on PATH (the Pub/Sub and Datastore emulators need it). "
            + INSTALL_HINT
        )
    return {
        "pubsub": [str(pubsub), f"--host={HOST}", f"--port={ports['pubsub']}"],
        "bigtable": [str(bigtable), "-host", HOST, "-port", str(ports["bigtable"])],
        "datastore": [
            str(datastore),
            "start",
            f"--host={HOST}",
            f"--port={ports['datastore']}",
            "--store_on_disk=false",
            "--consistency=1.0",
            str(data_dir / "datastore"),
        ],
    }


def _answers(name: str, port: int) -> bool:
    if name == "bigtable":
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            return False
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def emulator_env(ports: dict[str, int]) -> dict[str, str]:
    """The *_EMULATOR_HOST variables that point the Google Cloud clients at the emulators, and
    with the Datastore emulator its default project, the local one (``rillet-local``)."""
    env = {ENV_VARS[name]: f"{HOST}:{port}" for name, port in ports.items()}
    if "datastore" in ports:
        # A Datastore client made without a project takes it from these (as after gcloud's
        # `emulators datastore env-init`): DATASTORE_PROJECT_ID for most languages' clients,
        # DATASTORE_DATASET for Python's google-cloud-datastore, which reads only that one.
        env["DATASTORE_PROJECT_ID"] = LOCAL_PROJECT
        env["DATASTORE_DATASET"] = LOCAL_PROJECT
    return env


class LocalStack:
    """Starts and stops the emulators; state (ports, pids we started) lives in state_dir."""

    def __init__(self, state_dir: str | os.PathLike[str] = ".rillet") -> None:
        self.state_dir = Path(state_dir)
        self.state_file = self.state_dir / "local.json"

    def _load(self) -> _State:
        if self.state_file.exists():
            raw = json.loads(self.state_file.read_text())
            return _State(raw.get("ports", {}), raw.get("pids", {}))
        return _State()

    def _save(self, state: _State) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(asdict(state), indent=2))

    def ports(self) -> dict[str, int]:
        return {**DEFAULT_PORTS, **self._load().ports}

    def env(self) -> dict[str, str]:
        return emulator_env(self.ports())

    def up(self, ports: dict[str, int] | None = None, timeout_s: float = 90.0) -> dict[str, str]:
        """Starts the emulators that are not answering; returns {name: 'started'|'running'}."""
        state = self._load()
        wanted = {**DEFAULT_PORTS, **state.ports, **(ports or {})}
        result: dict[str, str] = {}
        to_start = [n for n in DEFAULT_PORTS if not _answers(n, wanted[n])]
        commands = _commands(sdk_root(), wanted, self.state_dir) if to_start else {}
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for name in DEFAULT_PORTS:
            if name not in to_start:
                result[name] = "running"
                continue
            log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
            proc = subprocess.Popen(
                commands[name],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: down() stops the JVM too
            )
            state.pids[name] = proc.pid
            result[name] = "started"
        state.ports = wanted
        self._save(state)
        deadline = time.monotonic() + timeout_s
        for name in to_start:
            while not _answers(name, wanted[name]):
                pid = state.pids[name]
                if not _alive(pid) or time.monotonic() > deadline:
                    log_tail = (logs / f"{name}.log").read_text(errors="replace")[-2000:]
                    self.down()
                    raise StackError(
                        f"the {name} emulator did not answer on {HOST}:{wanted[name]} "
                        f"(log {logs / (name + '.log')}):\n{log_tail}"
                    )
                time.sleep(0.2)
        return result

    def down(self, only: Iterable[str] | None = None) -> dict[str, str]:
        """Stops only the emulators this state started (a paused one is resumed first), and
        waits for their child processes too (the Datastore emulator's JVM under its script).
        ``only``: just those (a demo stops what it started, not what 'local up' did)."""
        state = self._load()
        result = {}
        names = set(state.pids) if only is None else set(only) & set(state.pids)
        for name, pid in list(state.pids.items()):
            if name not in names:
                continue
            if _alive(pid):
                tree = [pid]
                if _ours(pid):
                    tree += _descendants(pid)
                    # A stopped process leaves SIGTERM pending until it is continued.
                    _signal_tree(pid, signal.SIGCONT)
                with suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)
                for _ in range(50):
                    _reap(pid)
                    if all(_gone(p) for p in tree):
                        break
                    time.sleep(0.1)
                if not all(_gone(p) for p in tree):
                    with suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                    for child in tree[1:]:
                        if not _gone(child):
                            with suppress(ProcessLookupError):
                                os.kill(child, signal.SIGKILL)
                _reap(pid)
                result[name] = "stopped"
            else:
                result[name] = "not running"
            del state.pids[name]
        self._save(state)
        return result

    # -- dependency outages (chaos testing) ---------------------------------------------------

    def _own_pid(self, name: str) -> int:
        if name not in DEFAULT_PORTS:
            expected = ", ".join(DEFAULT_PORTS)
            raise ValueError(f"unknown emulator {name!r}; expected one of {expected}")
        pid = self._load().pids.get(name)
        if pid is None or not _alive(pid):
            raise StackError(f"the {name} emulator was not started by this stack {self.state_dir}")
        if not _ours(pid):
            raise StackError(
                f"pid {pid} recorded for {name} is no longer the session leader this stack "
                "started (pid reused?); refusing to signal it"
            )
        return pid

    def pause(self, name: str) -> list[int]:
        """Freezes the emulator ``name`` (SIGSTOP to its process group and every descendant):
        it keeps its data but answers nothing. Returns once they are stopped, with the pids
        signalled. Idempotent. Only an emulator this stack started can be paused (StackError
        otherwise)."""
        pids = _signal_tree(self._own_pid(name), signal.SIGSTOP)
        _wait_until(pids, stopped=True)
        _LOGGER.warning("paused the %s emulator (pids %s)", name, pids)
        return pids

    def resume(self, name: str) -> list[int]:
        """Continues a paused emulator (SIGCONT to its group and descendants). Idempotent."""
        pids = _signal_tree(self._own_pid(name), signal.SIGCONT)
        _wait_until(pids, stopped=False)
        _LOGGER.warning("resumed the %s emulator (pids %s)", name, pids)
        return pids

    def paused(self, name: str) -> bool:
        """True if the emulator's recorded process is stopped (state T in /proc)."""
        pid = self._load().pids.get(name)
        return pid is not None and _stopped(pid)

    @contextmanager
    def outage(self, name: str) -> Iterator[None]:
        """Pauses the emulator for the block; it is resumed when the block exits, also on an
        exception.

            with stack.outage("bigtable"):         # down for the duration of the block
                time.sleep(15)
        """
        self.pause(name)
        try:
            yield
        finally:
            self.resume(name)

    def status(self) -> dict[str, dict[str, Any]]:
        state = self._load()
        ports = {**DEFAULT_PORTS, **state.ports}
        return {
            name: {
                "port": ports[name],
                "answering": _answers(name, ports[name]),
                "pid": state.pids.get(name),
                "started_by_us": name in state.pids and _alive(state.pids[name]),
                "paused": name in state.pids and _stopped(state.pids[name]),
            }
            for name in DEFAULT_PORTS
        }


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, session, ...)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for its parent counts as exited)."""
    if not _alive(pid):
        return True
    fields = _proc_stat(pid)
    return fields is not None and fields[0] in ("Z", "X")


def _stopped(pid: int) -> bool:
    fields = _proc_stat(pid)
    return fields is not None and fields[0] in ("T", "t")


def _ours(pid: int) -> bool:
    """True if pid still leads the session and process group up() created for it
    (start_new_session=True): a reused pid would not."""
    try:
        return os.getsid(pid) == pid and os.getpgid(pid) == pid
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    """All descendants of pid (from /proc; empty where /proc is not available)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        fields = _proc_stat(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def _signal_tree(pid: int, sig: int) -> list[int]:
    """Sends sig to the process group led by pid and to every descendant of pid (one that left
    the group included); returns the pids signalled."""
    with suppress(ProcessLookupError):
        os.killpg(pid, sig)
    signalled = [pid]
    for child in _descendants(pid):
        with suppress(ProcessLookupError):
            os.kill(child, sig)
            signalled.append(child)
    return signalled


def _wait_until(pids: list[int], stopped: bool, timeout_s: float = 2.0) -> None:
    """Waits (briefly) until the signal took effect: delivery is asynchronous."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(_stopped(pid) == stopped for pid in pids if _alive(pid)):
            return
        time.sleep(0.01)
    state = "stopped" if stopped else "running"
    _LOGGER.warning("pids %s are not all %s after %.0fs", pids, state, timeout_s)


def _reap(pid: int) -> None:
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """Sets environment variables for the duration of the block, then restores them."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def create_resources(topology: Topology = Topology()) -> None:
    """Creates topics, subscriptions and the feature table if missing (needs the emulator env)."""
    from google.api_core import exceptions
    from google.cloud import pubsub_v1

    from pipelines.stores.bigtable import StoreConfig, create_table

    publisher = pubsub_v1.PublisherClient()
    for topic in (
        topology.transactions_topic,
        topology.labels_topic,
        topology.predictions_topic,
        topology.dead_letter_topic,
        topology.alerts_topic,
    ):
        with suppress(exceptions.AlreadyExists):
            publisher.create_topic(name=publisher.topic_path(topology.project, topic))
    inputs = {topology.transactions_subscription, topology.labels_subscription}
    for sub, topic in topology.subscriptions().items():
        with suppress(exceptions.AlreadyExists):
            # The job's input subscriptions always retain acknowledged messages: crash recovery
            # seeks them back (pipelines.local_runner.recovery).
            create_subscription(topology.project, sub, topic, sub in inputs)
    create_table(StoreConfig(topology.project, topology.bigtable_instance, topology.bigtable_table))


def create_subscription(
    project: str, subscription: str, topic: str, retain_acked: bool = False
) -> str:
    """Creates a subscription (short names) to a topic; returns its full path."""
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    try:
        path = subscriber.subscription_path(project, subscription)
        subscriber.create_subscription(
            request={
                "name": path,
                "topic": f"projects/{project}/topics/{topic}",
                "ack_deadline_seconds": 60,
                "retain_acked_messages": retain_acked,
            }
        )
    finally:
        subscriber.close()
    return path
