"""What the coordinator and the workers exchange: work items, attempts' results, the write log.

Everything is plain data (picklable across processes). Elements, state and timers travel as
bytes encoded by the graph's coders, as on a runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AttemptResult", "FaultPlan", "TimerChange", "WorkItem", "Write"]

# The injection points that fail an attempt after one of its side effects.
AFTER_BIGTABLE, AFTER_DATASTORE, AFTER_PUBLISH = "bigtable", "datastore", "publish"
BEFORE_COMMIT = "commit"  # the attempt finished; the coordinator refuses its commit


@dataclass(frozen=True)
class FaultPlan:
    """What the coordinator decided for one attempt before dispatching it.

    ``fail_after``: the attempt raises right after its first write of that kind (AFTER_*), once
    the write happened. ``zombie``: the attempt's first write is held until the coordinator
    releases it (the key moves meanwhile, and the retry commits first); the write then happens.
    """

    fail_after: str | None = None
    zombie: bool = False


@dataclass
class WorkItem:
    """One attempt of a work item: a stage, its keys' elements and due timers, their state."""

    item_id: int
    attempt_id: int
    stage_id: int
    # (key bytes, or b"" for an unkeyed stage) -> encoded WindowedValues, in delivery order
    elements: list[tuple[bytes, list[bytes]]]
    timers: list[tuple[bytes, str, bytes]] = field(default_factory=list)  # (key, family, timer)
    state: dict[bytes, bytes] = field(default_factory=dict)  # state key -> encoded bag
    plan: FaultPlan = FaultPlan()


@dataclass(frozen=True)
class TimerChange:
    """A timer set or cleared by an attempt (applied only if the attempt commits)."""

    key: bytes
    family: str
    tag: str
    window: bytes
    clear: bool
    fire_us: int
    hold_us: int
    encoded: bytes  # the Timer as its timer coder encodes it (what fires it later)


@dataclass(frozen=True)
class Write:
    """One side effect, as the wrapped client saw it (time.time() before and after)."""

    attempt_id: int
    worker: int
    kind: str  # AFTER_BIGTABLE, AFTER_DATASTORE, AFTER_PUBLISH: the client written to
    started: float
    ended: float
    size: int  # rows, mutations or messages


@dataclass
class AttemptResult:
    """What an attempt returns to the coordinator: its outputs, state and timer changes (all
    still uncommitted), or the failure; and every write its thread made."""

    attempt_id: int
    worker: int
    ok: bool
    error: str = ""
    injected: str | None = None  # the injection point that failed it
    # (target stage id, key bytes, encoded WindowedValue, timestamp µs)
    outputs: list[tuple[int, bytes, bytes, int]] = field(default_factory=list)
    state: dict[bytes, dict[bytes, bytes | None]] = field(default_factory=dict)  # key -> changes
    timers: list[TimerChange] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    seconds: float = 0.0
