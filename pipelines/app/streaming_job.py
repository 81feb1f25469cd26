"""The streaming pipeline as a child process on the DirectRunner (LocalRun.start_job).

A child process, not a thread: the DirectRunner's streaming mode runs until cancelled, keeps
process-wide state (clients, caches) and its log is the user's first stop when something fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["StreamingJob"]


class StreamingJob:
    """Starts ``python -m pipelines.main`` with the given options, logs to ``log_path``,
    and stops it (terminate, then kill) on exit.

    Example Usage::

        with StreamingJob(["--project=rillet-local", "--model_dir=models"], log) as job:
            ...  # publish, wait, calling job.check() to notice a crash
    """

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
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> StreamingJob:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
