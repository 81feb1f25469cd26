"""One local job per feature table.

Two streaming jobs on one Bigtable table would corrupt each other's window state (each writes
with its own per-key fences, and the newer job's hide the older's writes: docs/specs/bigtable.md),
so ``rillet run`` on the DirectRunner holds an exclusive lock on the table for the job's life: a
file in ``<state_dir>/locks/``, locked with ``flock``. The kernel drops the lock when the process
ends, however it ends, so a killed job never blocks the next one, and no stale file has to be
cleaned up. The file holds the running job's pid, start time and table, for the refusal message.

The lock is per state folder: a second job with another ``--state-dir`` (or a Dataflow job) is
not seen.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from pipelines.app.errors import RUNTIME, UserError

__all__ = ["hold_table_lock", "lock_path"]


def _table_path(project: str, instance: str, table: str) -> str:
    """The table's resource name, as Bigtable writes it."""
    return f"projects/{project}/instances/{instance}/tables/{table}"


def lock_path(state_dir: str | os.PathLike[str], project: str, instance: str, table: str) -> Path:
    """The lock file of a table: one name per (project, instance, table), any characters."""
    # quote(..., safe="") escapes "+", so the separator cannot occur inside a part.
    name = "+".join(quote(part, safe="") for part in (project, instance, table))
    return Path(state_dir) / "locks" / f"{name}.lock"


@contextmanager
def hold_table_lock(
    state_dir: str | os.PathLike[str], project: str, instance: str, table: str
) -> Iterator[Path]:
    """Holds the table's lock for the block (yields the lock file), or raises a UserError
    (exit code 1) naming the job that holds it."""
    path = lock_path(state_dir, project, instance, table)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(
            f"cannot write the job lock {path} ({exc.strerror})",
            "pass a --state-dir you can write to",
            RUNTIME,
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refusal(fd, _table_path(project, instance, table)) from None
        holder = {
            "pid": os.getpid(),
            "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "table": _table_path(project, instance, table),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield path
        finally:
            # Emptied before the lock goes (with the descriptor): a job refused meanwhile never
            # reads a finished job's pid.
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def _refusal(fd: int, resource: str) -> UserError:
    """The message for a table whose lock another process holds (its file may still be empty
    if that job has only just taken it)."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        holder = {}
    pid = holder.get("pid")
    who = f"pid {pid}, started {holder.get('started', '?')}" if pid else "just started"
    stop = f"Ctrl-C where it runs, or kill {pid}" if pid else "Ctrl-C where it runs"
    return UserError(
        f"another rillet job ({who}) runs on table {resource} (one job per feature table: "
        "each would hide the other's writes)",
        f"stop it first ({stop}), or run this one on another table: --bigtable_table=NAME",
        RUNTIME,
    )
