"""The DirectRunner keeps every bundle's counters once pipelines.local_runner is installed
(pipelines/local_runner/step_metrics.py); Beam alone keeps each step's first bundle's only."""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream

from pipelines.local_runner.step_metrics import keep_every_bundles_metrics


class _Count(beam.DoFn):
    def __init__(self) -> None:
        self._seen = Metrics.counter("step-metrics-test", "seen")

    def process(self, element: Any) -> Any:
        self._seen.inc()
        yield element


def test_counters_of_every_bundle_are_committed() -> None:
    keep_every_bundles_metrics()
    options = PipelineOptions(["--runner=DirectRunner"])
    options.view_as(StandardOptions).streaming = True
    stream = (
        TestStream()
        .add_elements([1, 2])
        .advance_watermark_to(10)
        .add_elements([3, 4, 5])
        .advance_watermark_to(20)
        .add_elements([6])
        .advance_watermark_to_infinity()
    )
    p = beam.Pipeline(options=options)
    _ = p | stream | beam.ParDo(_Count())
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("seen"))["counters"]
    assert sum(c.committed for c in counters) == 6
