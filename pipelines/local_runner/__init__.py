"""DirectRunner-only machinery: imported by the job's entry point and the local tools, never by
the runner-neutral graph. ``tune_direct_runner`` applies every local tuning.

The one exception is ``recovery.tracker()``, which the transforms call (a no-op until the entry
point enables it): so importing this package imports nothing else, and the DirectRunner hooks are
imported when ``tune_direct_runner`` runs."""

from __future__ import annotations

__all__ = ["tune_direct_runner"]


def tune_direct_runner(pull_max_messages: int = 500) -> None:
    """Pub/Sub pulls of up to ``pull_max_messages`` that return at once, and DoFn introspection
    done once per DoFn class instead of once per bundle."""
    from pipelines.local_runner.dofn_specs import memoize_dofn_specs
    from pipelines.local_runner.pubsub_pull import tune_direct_runner_pubsub

    tune_direct_runner_pubsub(pull_max_messages)
    memoize_dofn_specs()
