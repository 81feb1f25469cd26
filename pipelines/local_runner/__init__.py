"""DirectRunner-only machinery: imported by the job's entry point and the local tools, never by
the runner-neutral graph (which reports completions to pipelines.core.completion; the recovery
tracker listens once enabled). ``tune_direct_runner`` applies every local tuning; the DirectRunner
hooks are imported when it runs."""

from __future__ import annotations

__all__ = ["tune_direct_runner"]


def tune_direct_runner(pull_max_messages: int = 500) -> None:
    """Pub/Sub pulls of up to ``pull_max_messages`` that return at once, DoFn introspection
    done once per DoFn class instead of once per bundle, every bundle's metrics kept, and the
    steps' shared objects (caches, clients, models) kept between bundles."""
    from pipelines.local_runner.dofn_specs import memoize_dofn_specs
    from pipelines.local_runner.pubsub_pull import tune_direct_runner_pubsub
    from pipelines.local_runner.shared_pins import pin_shared_objects
    from pipelines.local_runner.step_metrics import keep_every_bundles_metrics

    tune_direct_runner_pubsub(pull_max_messages)
    memoize_dofn_specs()
    keep_every_bundles_metrics()
    pin_shared_objects()
