"""Quiet by default: what the libraries print goes to the command's log file, not to the terminal.

rillet's commands speak in their own lines (``typer.echo``, rich). The libraries under them talk
too, three ways, and ``quiet_libraries`` sends all three to ``<log_dir>/<command>.log``:

- Python logging: Beam's warnings, and Beam 2.77's "Resource module is not available for current
  platform" at every model load (``apache_beam.ml.inference.base`` imports ``resource`` in the
  same ``try`` as its torch-only ModelManager, so without torch it thinks ``resource`` is
  missing). The root logger gets the file as its one handler, so ``logging.warning`` no longer
  installs a stderr handler of its own (``basicConfig``), nor does TensorFlow.
- Python warnings, through logging (``py.warnings``): the Bigtable client's ``RuntimeWarning:
  Connecting to Bigtable emulator`` at every client it makes, by design, with no switch.
- C++ logs written straight to file descriptor 2: TensorFlow's start-up notes and YDF's
  ``I0000 ... Loading model`` / ``Using legacy Quickscorer intrinsics`` at every model load.
  ``ydf_tf``'s inference op links its own copy of absl logging, which reads no environment
  variable and has no Python API (``TF_CPP_MIN_LOG_LEVEL`` quiets TensorFlow's logging, not
  it), so descriptor 2 itself is pointed at the log file, and Python's ``sys.stderr`` (rillet's
  messages, tracebacks, rich) at a copy of the terminal's. ``TF_CPP_MIN_LOG_LEVEL`` and
  ``GRPC_VERBOSITY`` still default to quieter levels, so the log holds what matters.

Process-wide, so it is for the console entry (``pipelines.app.cli.main`` run as ``rillet``), once
per process, before Beam or TensorFlow is imported; not for tests that call ``main`` in-process.
A user's own ``TF_CPP_MIN_LOG_LEVEL`` or ``GRPC_VERBOSITY`` is kept.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

__all__ = ["LOG_FORMAT", "log_path", "quiet_libraries"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# C++ verbosity of TensorFlow (1: no INFO lines) and gRPC, unless the user set their own.
_ENV_DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "1", "GRPC_VERBOSITY": "ERROR"}
# Commands whose child processes (docker, gcloud) talk to the user on descriptor 2: kept there.
_TERMINAL_COMMANDS = frozenset({"deploy"})


def log_path(log_dir: Path, command: str) -> Path:
    """The command's log file: ``local up`` -> ``local-up.log``; no command -> ``rillet.log``."""
    name = re.sub(r"[^A-Za-z0-9_.]+", "-", command.strip()).strip("-.") or "rillet"
    return log_dir / f"{name}.log"


def quiet_libraries(log_dir: Path, command: str) -> Path | None:
    """Sends the libraries' logging, warnings and C++ output of this process to
    ``log_dir/<command>.log`` (appended to; module docstring) and returns that path; None if the
    file cannot be made (an unwritable state folder): the libraries then print as before.

    Levels in the file: WARNING and above from the libraries, INFO and above from rillet's own
    loggers (``pipelines.*``: e.g. what a restarted job recovered)."""
    for name, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    path = log_path(log_dir, command)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        log = open(path, "a", encoding="utf-8")  # noqa: SIM115 - the process's log from now on
    except OSError:
        return None
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("pipelines").setLevel(logging.INFO)
    for logger in list(logging.root.manager.loggerDict.values()):
        # A library that printed on its own stderr handler now propagates to the file.
        if isinstance(logger, logging.Logger):
            for old in list(logger.handlers):
                if _on_terminal(old):
                    logger.removeHandler(old)
                    logger.propagate = True
    logging.captureWarnings(True)
    if command.split(" ")[0] not in _TERMINAL_COMMANDS:
        _redirect_fd2(log.fileno())
    return path


def _on_terminal(handler: logging.Handler) -> bool:
    return getattr(handler, "stream", None) in (
        sys.stderr,
        sys.stdout,
        sys.__stderr__,
        sys.__stdout__,
    )


def _redirect_fd2(log_fd: int) -> None:
    """Descriptor 2 to the log file; ``sys.stderr`` to a copy of what descriptor 2 was (the
    terminal), with the same encoding, so Python-level stderr output is unchanged."""
    sys.stderr.flush()
    terminal = os.dup(2)
    encoding = sys.stderr.encoding or "utf-8"
    os.dup2(log_fd, 2)
    sys.stderr = open(  # noqa: SIM115 - the process's stderr from now on
        terminal, "w", buffering=1, encoding=encoding, errors="backslashreplace"
    )
