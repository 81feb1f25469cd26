"""The pipeline graph: stable top-level labels, offline construction for DataflowRunner."""

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.main import pipeline_options
from pipelines.options import DIRECT_KEY_BUCKETS, unknown_arguments
from pipelines.streaming import STEP_LABELS, build_pipeline, key_buckets
from pipelines.transforms.inference import ServingConfig

SERVING = ServingConfig("/nonexistent/models")

# Dataflow --update matches steps by these names: changing one is a breaking change that needs
# --transform_name_mapping. Update this list only deliberately.
PINNED = (
    "ReadTransactions",
    "ReadLabels",
    "ParseTransactions",
    "ParseLabels",
    "ComputeFeatures",
    "Predict",
    "WritePredictions",
    "EvaluateOnline",
    "Monitor",
    "CollectDeadLetters",
    "WriteDeadLetters",
)


def top_level_labels(p: beam.Pipeline) -> set[str]:
    proto = p.to_runner_api()
    root = (
        proto.components.transforms[proto.root_transform_ids[0]]
        if len(proto.root_transform_ids) == 1
        else None
    )
    ids = root.subtransforms if root is not None else proto.root_transform_ids
    return {proto.components.transforms[i].unique_name for i in ids}


def test_step_labels_are_pinned() -> None:
    assert STEP_LABELS == PINNED
    options = PipelineOptions(["--project=rillet-local", "--streaming"])
    p = beam.Pipeline(options=options)
    build_pipeline(p, options, serving=SERVING)
    assert top_level_labels(p) == set(PINNED)


def test_constructs_for_dataflow_offline(tmp_path) -> None:
    options = PipelineOptions(
        [
            "--runner=DataflowRunner",
            "--project=my-project",
            "--region=europe-west1",
            "--temp_location=gs://my-bucket/temp",
            "--staging_location=gs://my-bucket/staging",
            "--streaming",
            "--enable_streaming_engine",
            "--setup_file=./setup.py",
            "--model_dir=gs://my-bucket/models",
            # Offline: no credentials lookup (it retries for minutes without a network).
            "--no_auth",
            "--dry_run=True",
        ]
    )
    p = beam.Pipeline(options=options)
    outputs = build_pipeline(p, options, serving=SERVING)
    proto = p.to_runner_api()
    names = {t.unique_name for t in proto.components.transforms.values()}
    assert {
        "ComputeFeatures/IndexIds",
        "ComputeFeatures/CustomerWindows",
        "ComputeFeatures/TerminalWindows",
        "Predict/RunInference/BeamML_RunInference",
    } <= names
    assert set(outputs) >= {"predictions", "dead_letters"}
    # On Dataflow every keyed stage has one key per entity (no hashing into buckets).
    assert key_buckets(options) == 0


@pytest.mark.parametrize("runner", ["DirectRunner", "DataflowRunner"])
def test_builds_without_beam_warnings(runner: str, caplog: pytest.LogCaptureFixture) -> None:
    """No construction warning: every Flatten's inputs share one windowing (Monitor's alerts),
    every stateful step's key coder is deterministic ('rillet run' shows neither)."""
    options = PipelineOptions(
        [
            f"--runner={runner}",
            "--project=my-project",
            "--region=europe-west1",
            "--temp_location=gs://my-bucket/temp",
            "--streaming",
            "--no_auth",
            "--dry_run=True",
        ]
    )
    p = beam.Pipeline(options=options)
    with caplog.at_level("WARNING", logger="apache_beam"):
        build_pipeline(p, options, serving=SERVING)
        p.to_runner_api()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("apache_beam")] == []


def test_stateful_steps_are_the_keyed_stages() -> None:
    """The only stateful steps are the three keyed stages, the online evaluation's waiting
    labels (keyed like the keyed stages) and its days (per model version and day), and the
    monitor's judges: drift per (model version, feature); online quality per version; health
    and data quality keyed by a constant after two keyed merges (bundles' stats on 16 shard
    keys, then the shards' partial results), so the constant key gets one merged element per
    window, never the event stream, and no step is a global combine."""
    from apache_beam.transforms.userstate import is_stateful_dofn

    options = PipelineOptions(["--project=rillet-local", "--streaming"])
    p = beam.Pipeline(options=options)
    build_pipeline(p, options, serving=SERVING)
    stateful = set()

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node) -> None:  # type: ignore[no-untyped-def]
            transform = node.transform
            if isinstance(transform, beam.ParDo) and is_stateful_dofn(transform.dofn):
                stateful.add(node.full_label.rsplit("/ParDo(", 1)[0])

    p.visit(Visitor())
    assert stateful == {
        "ComputeFeatures/IndexIds",
        "ComputeFeatures/CustomerWindows",
        "ComputeFeatures/TerminalWindows",
        "EvaluateOnline/AwaitPredictions",
        "EvaluateOnline/DayQuality",
        "Monitor/JudgeDrift",
        "Monitor/JudgeHealth",
        "Monitor/JudgeQuality",
        "Monitor/JudgeOnlineQuality",
    }
    assert key_buckets(options) == DIRECT_KEY_BUCKETS >= 16
    proto = p.to_runner_api()
    names = {t.unique_name for t in proto.components.transforms.values()}
    for judge in ("Health", "Quality"):
        assert {
            f"Monitor/Merge{judge}Shards",  # keyed by the bundle's shard
            f"Monitor/Key{judge}",
            f"Monitor/Merge{judge}",  # the constant key: at most 16 partial results a window
            f"Monitor/Judge{judge}",
        } <= names
    assert not any("CombineGlobally" in name for name in names)


def test_unknown_argument_is_reported() -> None:
    assert unknown_arguments(["--project=x", "--bigtable_tabel=oops"]) == ["--bigtable_tabel=oops"]
    with pytest.raises(SystemExit) as info:
        pipeline_options(["--project=x", "--bigtable_tabel=oops"])
    assert info.value.code == 2


def test_invalid_threshold_is_reported(capsys) -> None:
    with pytest.raises(SystemExit):
        pipeline_options(
            ["--project=x", "--risk_medium_threshold=0.9", "--risk_high_threshold=0.5"]
        )
    assert "risk" in capsys.readouterr().err
