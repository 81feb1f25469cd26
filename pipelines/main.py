"""The streaming job's entry point (the Flex Template's FLEX_TEMPLATE_PYTHON_PY_FILE, and
``python -m pipelines.main``): options, DirectRunner hooks, run, wait. The graph is
pipelines/streaming.py.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.core.job_arguments import BadArguments, job_parser, stray_positionals
from pipelines.options import RilletOptions, unknown_arguments
from pipelines.streaming import DIRECT_RUNNERS, build_pipeline, input_subscriptions

__all__ = [
    "checked_options",
    "pipeline_options",
    "run",
    "start_snapshot",
    "unknown_argument_errors",
]

_LOGGER = logging.getLogger(__name__)


def pipeline_options(argv: Sequence[str]) -> PipelineOptions:
    """Options for a streaming run; a wrong argument exits with its message (exit code 2)."""
    options, errors = checked_options(argv)
    if errors:
        for error in errors:
            print(f"rillet run: {error}", file=sys.stderr)
        raise SystemExit(2)
    return options


def checked_options(argv: Sequence[str]) -> tuple[PipelineOptions, list[str]]:
    """Options for a streaming run and what is wrong with them (unknown or stray arguments, an
    unknown runner, values that do not fit together), as messages."""
    stray = stray_positionals(argv)
    try:
        # Each value of its kind; paths are the launcher's to check ('rillet run' does).
        job_parser(check_paths=False).parse_known_args(list(argv))
    except BadArguments as exc:
        return PipelineOptions([]), [str(exc)]
    options = PipelineOptions(list(argv))
    options.view_as(StandardOptions).streaming = True
    errors = options.view_as(RilletOptions).validate_local()
    errors += unknown_argument_errors(argv)
    if stray:
        errors.append(
            f"unexpected argument(s) {' '.join(stray)}: options are --name=value (a value with "
            "spaces needs quotes)"
        )
    errors += _runner_errors(options.view_as(StandardOptions).runner)
    return options, errors


def unknown_argument_errors(argv: Sequence[str]) -> list[str]:
    """Flags no pipeline option declares, with the closest known one."""
    unknown = unknown_arguments(argv)
    if not unknown:
        return []
    return [f"unknown argument(s) {' '.join(unknown)}{_closest(unknown)}; see 'rillet run --help'"]


def _closest(unknown: Sequence[str]) -> str:
    """' (did you mean --x?)' for the first unknown flag close to a known pipeline option."""
    import difflib

    from pipelines.options import RilletOptions

    flag = unknown[0].split("=", 1)[0]
    known = [a for a in RilletOptions.option_names() if a.startswith("--")]
    close = difflib.get_close_matches(flag, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


_RUNNERS = (*DIRECT_RUNNERS, "DataflowRunner", "TestDataflowRunner", "PrismRunner")


def _runner_errors(runner: str | None) -> list[str]:
    """A runner Beam does not know, with the closest known name."""
    import difflib

    if runner is None or runner in _RUNNERS or "." in runner:  # a dotted path: a custom runner
        return []
    close = difflib.get_close_matches(runner, _RUNNERS, n=1)
    hint = (
        f"did you mean --runner={close[0]}?" if close else f"expected one of {', '.join(_RUNNERS)}"
    )
    return [f"unknown runner {runner!r}; {hint}"]


def run(argv: Sequence[str] | None = None, wait: bool = True) -> Any:
    """Builds and runs the streaming pipeline. On the DirectRunner, Pub/Sub pulls are tuned
    (see pipelines/local_runner) and, with --recovery_checkpoint, the job first recovers what
    a killed predecessor had in flight and then keeps the checkpoint (see
    pipelines.local_runner.recovery); with --monitor_dir, the local monitoring snapshot is
    written (pipelines.local_runner.snapshot)."""
    options = pipeline_options(sys.argv[1:] if argv is None else argv)
    opts = options.view_as(RilletOptions)
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    if runner in DIRECT_RUNNERS:
        from pipelines.local_runner import tune_direct_runner

        tune_direct_runner(opts.direct_pull_max_messages)
        if opts.recovery_checkpoint:
            _start_recovery(options)
    elif opts.recovery_checkpoint:
        _LOGGER.warning("--recovery_checkpoint is for the DirectRunner; %s ignores it", runner)
    p = beam.Pipeline(options=options)
    build_pipeline(p, options)
    result = p.run()
    writer = start_snapshot(result, options)
    if wait:
        try:
            result.wait_until_finish()
        finally:
            if writer is not None:
                writer.stop()
    return result


def start_snapshot(result: Any, options: PipelineOptions) -> Any:
    """With --monitor_dir on a Direct runner: starts and returns the local monitoring snapshot
    writer of ``result`` (pipelines.local_runner.snapshot); else None."""
    opts = options.view_as(RilletOptions)
    if not opts.monitor_dir:
        return None
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    if runner not in DIRECT_RUNNERS:
        _LOGGER.warning("--monitor_dir is for the DirectRunner; %s ignores it", runner)
        return None
    from pipelines.local_runner.snapshot import SnapshotWriter

    writer = SnapshotWriter(result, options)
    writer.start()
    return writer


def _start_recovery(options: PipelineOptions) -> None:
    """Seeks the input subscriptions back to the checkpoint, then tracks and checkpoints."""
    from pipelines.local_runner import recovery

    opts = options.view_as(RilletOptions)
    sought = recovery.seek_to_checkpoint(opts.recovery_checkpoint, input_subscriptions(options))
    if sought:
        _LOGGER.info("resumed from %s: %s", opts.recovery_checkpoint, sought)
    recovery.tracker().enable(opts.max_in_flight)
    recovery.CheckpointWriter(opts.recovery_checkpoint).start()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run()
