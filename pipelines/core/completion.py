"""Completion groups: which outputs a message led to, so a runner hook can tell when it is done.

The graph is runner-neutral: parse, the keyed stages and the sinks say what each output came from
(``hold``, ``chain``) and when it reached its sink (``release``), through ``completion()``. By
default nothing listens (Dataflow acknowledges a message only after its effects are durably
checkpointed). The DirectRunner acknowledges at pull, so its entry point installs the crash-recovery
tracker (pipelines/local_runner/recovery.py), which finishes a message when its last output
reached a sink and checkpoints the oldest unfinished one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

__all__ = ["Completion", "Receipt", "completion", "install"]

# (subscription path, message id): one Pub/Sub message.
Receipt = tuple[str, str]


class Completion(Protocol):
    """What the graph reports; tokens are ints, 0 meaning "nothing to wait for"."""

    def hold(self, receipts: Sequence[Receipt], outputs: int) -> int:
        """Messages that finish when ``outputs`` outputs were released; returns their token."""
        ...

    def chain(self, tokens: Iterable[int], outputs: int) -> int:
        """A stage's ``outputs`` outputs came from inputs carrying ``tokens``: the inputs are
        released once every output was."""
        ...

    def release(self, token: int) -> None:
        """One output of group ``token`` reached its sink."""
        ...

    def reopen(self, receipt: Receipt, publish_us: int) -> None:
        """A finished message gets new outputs (a waiting label's dead letter)."""
        ...


class _Nothing:
    """The default: nobody listens."""

    def hold(self, receipts: Sequence[Receipt], outputs: int) -> int:
        return 0

    def chain(self, tokens: Iterable[int], outputs: int) -> int:
        return 0

    def release(self, token: int) -> None:
        return None

    def reopen(self, receipt: Receipt, publish_us: int) -> None:
        return None


_INSTALLED: list[Completion] = [_Nothing()]


def completion() -> Completion:
    """What this process reports to (every DoFn of the local runner runs in this process)."""
    return _INSTALLED[0]


def install(listener: Completion | None) -> None:
    """Makes ``listener`` receive the graph's reports (None: nobody)."""
    _INSTALLED[0] = listener if listener is not None else _Nothing()
