"""terraform/: parses, is documented and least-privilege, and matches the pipeline's resource names.

Terraform is not run here (no providers, no network): these checks are static, plus, in the
slow tests, checkov (offline, in its own venv via terraform/check.sh) and the provider schema
check (terraform/check_schema.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipelines.app.local import Topology
from pipelines.options import RilletOptions
from pipelines.stores.bigtable import FAMILY_FEATURES, FAMILY_LABEL, FAMILY_TX

hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is not installed (dev extra)")

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"
TF_FILES = sorted(TERRAFORM.rglob("*.tf"))
TFVARS_EXAMPLES = sorted((TERRAFORM / "environments").glob("*.tfvars.example"))
PRIMITIVE_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}
LONGEST_LOOKBACK_DAYS = 37
THRESHOLDS_FILE = ROOT / "pipelines" / "core" / "alert_thresholds.json"
THRESHOLDS_EXPR = 'jsondecode(file("${path.module}/../pipelines/core/alert_thresholds.json"))'
MONITORING_TYPES = (
    "google_monitoring_dashboard",
    "google_monitoring_alert_policy",
    "google_monitoring_notification_channel",
)
# Cloud Monitoring alert policies judge these service_health thresholds (the job cannot see them).
HEALTH_KEYS = {"system_lag_s", "data_freshness_s", "oldest_unacked_age_s", "dead_letter_per_s"}
# Metric types the dashboard must chart (Google Cloud metrics list: Dataflow, Pub/Sub, Compute).
DASHBOARD_METRIC_TYPES = {
    "dataflow.googleapis.com/job/system_lag",
    "dataflow.googleapis.com/job/data_watermark_age",
    "dataflow.googleapis.com/job/user_counter",
    "pubsub.googleapis.com/subscription/num_undelivered_messages",
    "pubsub.googleapis.com/subscription/oldest_unacked_message_age",
    "pubsub.googleapis.com/topic/send_message_operation_count",
    "compute.googleapis.com/instance/cpu/utilization",
    "dataflow.googleapis.com/worker/memory/bytes_used",
}
# Beam metric names the dashboard's user_counter charts must match: the job's counters and the
# Monitor stage's gauges and counters (docs/specs/monitoring.md, "Beam metrics of the Monitor ...").
USER_METRIC_NAMES = [
    "transactions_valid",
    "predictions_written",
    "alerts_raised",
    "alerts_raised/drift",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_max_ms",
    "events_per_s",
    "predictions_per_s",
    "quality_rate_ppm/dead_letter_rate",
    "drift_psi_milli/champion/TX_AMOUNT",
    "drift_psi_milli/challenger/score",
    "ap_ppm/champion",
    "cp100_ppm/challenger",
]


def _unquote(value: Any) -> Any:
    """python-hcl2 >= 8 keeps the quotes of string literals and block labels; drop them."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _load(path: Path) -> dict[str, Any]:
    with path.open() as fh:
        return hcl2.load(fh)


@pytest.fixture(scope="module")
def parsed() -> dict[Path, dict[str, Any]]:
    return {path: _load(path) for path in TF_FILES}


def _blocks(parsed: dict[Path, dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """Top-level blocks with one label (variable, output): name -> body."""
    out: dict[str, dict[str, Any]] = {}
    for doc in parsed.values():
        for block in doc.get(kind, []):
            for name, body in block.items():
                out[_unquote(name)] = body
    return out


def _resources(parsed: dict[Path, dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(type, name) -> body of every resource."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in parsed.values():
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                for name, body in named.items():
                    out[(_unquote(rtype), _unquote(name))] = body
    return out


def _locals(parsed: dict[Path, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for doc in parsed.values():
        for block in doc.get("locals", []):
            out.update({k: v for k, v in block.items() if not k.startswith("__")})
    return out


def _walk(value: Any):
    """Every key and scalar in a parsed document."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)
    else:
        yield value


def test_terraform_files_exist() -> None:
    names = {p.name for p in TF_FILES}
    assert {"versions.tf", "variables.tf", "outputs.tf"} <= names
    assert (TERRAFORM / "backend.tf.example").is_file()
    assert {p.name for p in TFVARS_EXAMPLES} == {"dev.tfvars.example", "prod.tfvars.example"}


def test_every_file_parses(parsed: dict[Path, dict[str, Any]]) -> None:
    assert parsed, "no .tf files"
    for path in TFVARS_EXAMPLES:
        assert _load(path), path


def test_tfvars_examples_set_only_declared_variables(parsed: dict[Path, dict[str, Any]]) -> None:
    declared = set(_blocks(parsed, "variable"))
    for path in TFVARS_EXAMPLES:
        assigned = {k for k in _load(path) if not k.startswith("__")}
        assert assigned <= declared, (path.name, assigned - declared)


@pytest.mark.parametrize("kind", ["variable", "output"])
def test_every_variable_and_output_has_a_description(
    parsed: dict[Path, dict[str, Any]], kind: str
) -> None:
    blocks = _blocks(parsed, kind)
    assert blocks, f"no {kind} blocks"
    missing = [name for name, body in blocks.items() if not _unquote(body.get("description", ""))]
    assert not missing, f"{kind}s without a description: {missing}"


def test_no_provisioners_or_local_exec(parsed: dict[Path, dict[str, Any]]) -> None:
    for path, doc in parsed.items():
        keys = {k for k in _walk(doc) if isinstance(k, str)}
        assert "provisioner" not in keys, path
        assert "local-exec" not in path.read_text(), path
    assert not any(
        rtype in {"null_resource", "terraform_data"} for rtype, _ in _resources(parsed)
    ), "no shell-running resources"


def test_no_primitive_roles(parsed: dict[Path, dict[str, Any]]) -> None:
    roles = set()
    for body in _resources(parsed).values():
        if "role" in body:
            roles.add(_unquote(body["role"]))
    assert roles, "no IAM bindings found"
    assert not roles & PRIMITIVE_ROLES
    for path in TF_FILES:
        for role in PRIMITIVE_ROLES:
            assert f'"{role}"' not in path.read_text(), (path, role)


def test_dataflow_roles_are_bound_on_the_narrowest_resource(
    parsed: dict[Path, dict[str, Any]],
) -> None:
    resources = _resources(parsed)
    project_roles = {
        (_unquote(body["role"]), body["member"])
        for (rtype, _), body in resources.items()
        if rtype in {"google_project_iam_member", "google_project_iam_binding"}
    }
    # Only roles with no narrower scope may be granted on the project: to the workers, what the job
    # does; to the deployers, job management (their actAs is on the worker account alone).
    assert project_roles == {
        ("roles/dataflow.worker", "${local.dataflow_member}"),
        ("roles/datastore.user", "${local.dataflow_member}"),
        ("roles/dataflow.developer", "${each.value}"),
        # The weekly retraining job reads served predictions (Datastore IAM is project-level).
        ("roles/datastore.viewer", "${local.retrain_member}"),
    }
    act_as = [b for (t, _), b in resources.items() if t == "google_service_account_iam_member"]
    assert [b["service_account_id"] for b in act_as] == ["${google_service_account.dataflow.name}"]
    assert not any(rtype == "google_project_iam_policy" for rtype, _ in resources)
    by_type = {
        "google_pubsub_subscription_iam_member": "roles/pubsub.subscriber",
        "google_pubsub_topic_iam_member": "roles/pubsub.publisher",
        "google_bigtable_instance_iam_member": "roles/bigtable.user",
        "google_storage_bucket_iam_member": "roles/storage.objectAdmin",
    }
    for rtype, role in by_type.items():
        granted = {_unquote(b["role"]) for (t, _), b in resources.items() if t == rtype}
        assert role in granted, (rtype, role)


def test_bigtable_families_and_gc_rules_match_the_feature_store(
    parsed: dict[Path, dict[str, Any]],
) -> None:
    resources = _resources(parsed)
    table = resources[("google_bigtable_table", "features")]
    families = {_unquote(cf["family"]) for cf in table["column_family"]}
    assert families == {FAMILY_TX, FAMILY_LABEL, FAMILY_FEATURES}

    events = resources[("google_bigtable_gc_policy", "events")]
    assert set(re.findall(r'"(\w+)"', events["for_each"])) == {FAMILY_TX, FAMILY_LABEL}
    assert "union" in events["gc_rules"] and "max_version = 1" in events["gc_rules"]
    assert "var.bigtable_event_max_age_days" in events["gc_rules"]
    features = resources[("google_bigtable_gc_policy", "features")]
    assert _unquote(features["column_family"]) == FAMILY_FEATURES
    assert "max_version = 1" in features["gc_rules"]
    assert "max_age" not in features["gc_rules"]

    variables = _blocks(parsed, "variable")
    assert variables["bigtable_event_max_age_days"]["default"] > LONGEST_LOOKBACK_DAYS
    assert _unquote(variables["bigtable_instance_id"]["default"]) == Topology.bigtable_instance
    assert _unquote(variables["bigtable_table_id"]["default"]) == Topology.bigtable_table


def test_pubsub_names_match_the_pipeline(parsed: dict[Path, dict[str, Any]]) -> None:
    topology = Topology()
    local = _locals(parsed)
    topics = {_unquote(v) for v in local["topics"].values()}
    assert topics == {
        topology.transactions_topic,
        topology.labels_topic,
        topology.predictions_topic,
        topology.dead_letter_topic,
        topology.alerts_topic,
    }
    subscriptions = {
        name: _unquote(local["topics"][_unquote(spec["topic"])])
        for name, spec in local["subscriptions"].items()
    }
    assert subscriptions == topology.subscriptions()
    dataflow_inputs = {name for name, spec in local["subscriptions"].items() if spec["dataflow"]}
    assert dataflow_inputs == {topology.transactions_subscription, topology.labels_subscription}

    options = RilletOptions([])
    assert options.transactions_subscription == topology.transactions_subscription
    assert options.labels_subscription == topology.labels_subscription
    assert options.predictions_topic == topology.predictions_topic
    assert options.dead_letter_topic == topology.dead_letter_topic
    assert options.alerts_topic == topology.alerts_topic


def test_subscriptions_dead_letter_and_suit_dataflow(parsed: dict[Path, dict[str, Any]]) -> None:
    resources = _resources(parsed)
    sub = resources[("google_pubsub_subscription", "main")]
    assert sub["dead_letter_policy"], "subscriptions need a dead-letter policy"
    assert "message_retention_duration" in sub
    deadline = _blocks(parsed, "variable")["ack_deadline_seconds"]["default"]
    assert 60 <= deadline <= 600
    assert ("google_pubsub_topic", "dead_letter") in resources
    # The Pub/Sub service agent must be able to forward to the dead-letter topics.
    assert ("google_pubsub_topic_iam_member", "dead_letter_publisher") in resources
    assert ("google_pubsub_subscription_iam_member", "dead_letter_subscriber") in resources


def test_checkov_skips_state_a_reason() -> None:
    for path in [*TF_FILES, ROOT / "dataflow" / "Dockerfile"]:
        for line in path.read_text().splitlines():
            if "checkov:skip" in line:
                assert re.search(r"checkov:skip=CKV\w*_\d+:\s*\S", line), (path, line)


@pytest.mark.slow
def test_checkov_passes_offline() -> None:
    if shutil.which("python3.11") is None:
        pytest.skip("python3.11 is missing: terraform/check.sh builds .venv-checkov with it")
    result = subprocess.run(
        ["bash", str(TERRAFORM / "check.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    output = result.stdout + result.stderr
    # Two scans: terraform/ and dataflow/Dockerfile.
    assert "terraform scan results" in output and "dockerfile scan results" in output, output
    results = re.findall(r"Passed checks: (\d+), Failed checks: (\d+)", output)
    assert len(results) == 2, output[-3000:]
    for passed, failed in results:
        assert int(passed) > 0 and int(failed) == 0, output[-3000:]
    assert result.returncode == 0, output[-3000:]


def _schema_checker():
    """terraform/check_schema.py, imported by path (terraform/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_schema", TERRAFORM / "check_schema.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_terraform_matches_the_provider_schema() -> None:
    """Arguments, blocks, required arguments and enumerated values against the provider schema."""
    checker = _schema_checker()
    checked, problems = checker.check()
    assert checked >= 45
    assert problems == []
    types = checker.assembly()
    for rtype in MONITORING_TYPES:
        assert checker.config_fqn("resource", rtype) in types, rtype


@pytest.mark.slow
def test_schema_check_catches_typos_missing_arguments_and_bad_values(tmp_path: Path) -> None:
    checker = _schema_checker()
    for path in TF_FILES:
        text = path.read_text()
        if path.name == "bigtable.tf":
            text = text.replace('family = "tx"', 'famly = "tx"')
        if path.name == "datastore.tf":
            text = text.replace('"OPTIMISTIC"', '"OPTIMISTICAL"')
        if path.name == "pubsub.tf":
            text = text.replace("ack_deadline_seconds", "ack_deadline_secs", 1)
        if path.name == "monitoring.tf":
            # The monitoring resources are checked too, nested blocks included.
            text = text.replace('"COMPARISON_GE"', '"COMPARISON_GTE"')
            text = text.replace("per_series_aligner", "per_series_align", 1)
            text = text.replace("dashboard_json", "dashboard", 1)
        (tmp_path / path.name).write_text(text)
    _, problems = checker.check(tmp_path)
    joined = "\n".join(problems)
    assert "unknown argument or block 'famly'" in joined
    assert "required argument family is not set" in joined
    assert "'OPTIMISTICAL' is not one of" in joined
    assert "unknown argument or block 'ack_deadline_secs'" in joined
    assert "'COMPARISON_GTE' is not one of" in joined
    assert "unknown argument or block 'per_series_align'" in joined
    assert "unknown argument or block 'dashboard'" in joined
    assert "required argument dashboardJson is not set" in joined
    assert len(problems) == 8, joined


def test_weekly_retrain_job_is_least_privilege_and_scheduled(
    parsed: dict[Path, dict[str, Any]],
) -> None:
    resources = _resources(parsed)
    job = resources[("google_cloud_run_v2_job", "retrain")]
    container = job["template"][0]["template"][0]["containers"][0]
    assert [_unquote(c) for c in container["command"]] == ["/bin/sh", "-c"]
    script = str(_locals(parsed)["retrain_script"])
    assert "rillet retrain --history" in script and "--register challenger" in script
    assert "rillet models auto-promote --model-dir" in script
    # Storage: read the history prefix, write the model prefix, each conditioned on its prefix.
    for name, role in (
        ("retrain_history_reader", "roles/storage.objectViewer"),
        ("retrain_models_writer", "roles/storage.objectUser"),
    ):
        body = resources[("google_storage_bucket_iam_member", name)]
        assert _unquote(body["role"]) == role
        assert "startsWith" in body["condition"][0]["expression"]
    # The trigger may run this job only, and calls its :run endpoint.
    trigger = resources[("google_cloud_run_v2_job_iam_member", "retrain_trigger")]
    assert _unquote(trigger["role"]) == "roles/run.invoker"
    scheduler = resources[("google_cloud_scheduler_job", "retrain")]
    assert _unquote(scheduler["schedule"]) == "${var.retrain_schedule}"
    assert str(_unquote(scheduler["http_target"][0]["uri"])).endswith(
        "/jobs/${google_cloud_run_v2_job.retrain.name}:run"
    )


def test_alerts_topic_follows_the_topic_pattern(parsed: dict[Path, dict[str, Any]]) -> None:
    """alerts: a pipeline topic like the others (CMEK, retention, labels, its own dead-letter topic
    and monitor subscription), and the workers may publish to it."""
    resources = _resources(parsed)
    local = _locals(parsed)
    assert _unquote(local["topics"]["alerts"]) == RilletOptions([]).alerts_topic
    assert local["subscriptions"]["alerts-monitor"] == {"topic": '"alerts"', "dataflow": False}
    topic = resources[("google_pubsub_topic", "main")]
    assert topic["for_each"] == "${local.topics}"
    assert {"kms_key_name", "message_retention_duration", "labels"} <= set(topic)
    assert resources[("google_pubsub_topic", "dead_letter")]["for_each"] == "${local.topics}"
    publisher = resources[("google_pubsub_topic_iam_member", "dataflow_publisher")]
    assert '"alerts"' in publisher["for_each"]
    assert _unquote(publisher["role"]) == "roles/pubsub.publisher"


def test_subscriber_role_is_only_granted_on_subscriptions(
    parsed: dict[Path, dict[str, Any]],
) -> None:
    """roles/pubsub.subscriber never on a topic or the project: only on one subscription each."""
    for (rtype, name), body in _resources(parsed).items():
        if _unquote(body.get("role", "")) == "roles/pubsub.subscriber":
            assert rtype == "google_pubsub_subscription_iam_member", (rtype, name)


def test_consumer_subscriptions_grant_subscriber_on_their_own_subscription_only(
    parsed: dict[Path, dict[str, Any]],
) -> None:
    resources = _resources(parsed)
    local = _locals(parsed)
    assert "var.prediction_consumers" in local["prediction_consumers"]

    sub = resources[("google_pubsub_subscription", "consumer")]
    assert sub["for_each"] == "${local.prediction_consumers}"
    assert sub["topic"] == '${google_pubsub_topic.main["predictions"].id}'
    assert sub["filter"] == "${each.value.filter}"
    policy = sub["dead_letter_policy"][0]
    assert policy["dead_letter_topic"] == (
        "${google_pubsub_topic.consumer_dead_letter[each.key].id}"
    )
    assert "kms_key_name" in resources[("google_pubsub_topic", "consumer_dead_letter")]

    # The consumer's account: subscriber on its own subscription, and on nothing else at all.
    grants = [
        (rtype, body)
        for (rtype, _), body in resources.items()
        if "each.value.service_account" in str(body.get("member", ""))
    ]
    assert len(grants) == 1, grants
    rtype, body = grants[0]
    assert rtype == "google_pubsub_subscription_iam_member"
    assert _unquote(body["role"]) == "roles/pubsub.subscriber"
    assert body["subscription"] == "${google_pubsub_subscription.consumer[each.key].name}"
    assert body["member"] == "serviceAccount:${each.value.service_account}".join('""')

    # Dead-letter forwarding: the Pub/Sub service agent publishes to the consumer's dead-letter
    # topic and acks on the consumer's subscription (as pubsub.tf does for the pipeline's).
    publisher = resources[("google_pubsub_topic_iam_member", "consumer_dead_letter_publisher")]
    assert publisher["topic"] == "${google_pubsub_topic.consumer_dead_letter[each.key].name}"
    assert publisher["member"] == "${local.pubsub_service_agent}"
    agent = resources[("google_pubsub_subscription_iam_member", "consumer_dead_letter_subscriber")]
    assert agent["subscription"] == "${google_pubsub_subscription.consumer[each.key].name}"
    assert agent["member"] == "${local.pubsub_service_agent}"

    outputs = _blocks(parsed, "output")
    assert (
        "google_pubsub_subscription.consumer"
        in outputs["prediction_consumer_subscriptions"]["value"]
    )


def test_prediction_consumers_variable_is_validated(parsed: dict[Path, dict[str, Any]]) -> None:
    variable = _blocks(parsed, "variable")["prediction_consumers"]
    assert variable["default"] == []
    conditions = " ".join(v["condition"] for v in variable["validation"])
    assert "distinct(" in conditions  # unique names
    assert "^[a-z]" in conditions  # lowercase names
    assert "c.service_account" in conditions and "@" in conditions  # an email


def _terraform() -> str:
    binary = shutil.which("terraform")
    if binary is None:
        pytest.skip("terraform is not installed")
    return binary


def _run_terraform(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_terraform(), f"-chdir={workdir}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"},
    )


@pytest.mark.parametrize(
    ("consumers", "error"),
    [
        ([{"name": "case-mgmt", "service_account": "cm@p.iam.gserviceaccount.com"}] * 2, "unique"),
        ([{"name": "Case_Mgmt", "service_account": "cm@p.iam.gserviceaccount.com"}], "lowercase"),
        (
            [{"name": "bi", "service_account": "serviceAccount:bi@p.iam.gserviceaccount.com"}],
            "service account email",
        ),
        (
            [{"name": "bi", "service_account": "bi@p.iam.gserviceaccount.com", "filter": ""}],
            "filter",
        ),
        (
            [
                {
                    "name": "case-mgmt",
                    "service_account": "cm@p.iam.gserviceaccount.com",
                    "filter": 'attributes.risk_band = "high"',
                },
                {"name": "bi", "service_account": "bi@p.iam.gserviceaccount.com"},
            ],
            None,
        ),
    ],
)
def test_prediction_consumers_validation_with_terraform(
    tmp_path: Path, consumers: list[dict[str, str]], error: str | None
) -> None:
    """The variable's validation rules, run by Terraform (a variable alone needs no provider)."""
    text = (TERRAFORM / "variables.tf").read_text()
    block = re.search(r'^variable "prediction_consumers" \{\n.*?^\}\n', text, re.M | re.S)
    assert block is not None
    (tmp_path / "variables.tf").write_text(block.group(0))
    (tmp_path / "test.auto.tfvars.json").write_text(json.dumps({"prediction_consumers": consumers}))
    assert _run_terraform(tmp_path, "init", "-backend=false", "-input=false").returncode == 0
    result = _run_terraform(tmp_path, "plan", "-input=false", "-no-color")
    if error is None:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0
        assert error in " ".join(result.stderr.split()), result.stderr


def test_alert_thresholds_are_read_from_the_thresholds_file(
    parsed: dict[Path, dict[str, Any]],
) -> None:
    """Terraform reads pipelines/core/alert_thresholds.json; no threshold number is repeated."""
    assert (TERRAFORM / ".." / "pipelines" / "core" / "alert_thresholds.json").resolve() == (
        THRESHOLDS_FILE
    )
    local = _locals(parsed)
    assert local["alert_thresholds"] == "${" + THRESHOLDS_EXPR + "}"
    assert local["service_health"] == "${local.alert_thresholds.service_health}"
    health = json.loads(THRESHOLDS_FILE.read_text())["service_health"]
    for key, expr in local["health_thresholds"].items():
        assert key in health, key
        assert expr == f"${{local.service_health.{key}}}", (key, expr)
    # Every service-health policy judges one of the file's thresholds, through health_thresholds.
    judged = {_unquote(p["threshold"]) for p in local["health_policies"].values()}
    assert judged == HEALTH_KEYS
    policy = _resources(parsed)[("google_monitoring_alert_policy", "service_health")]
    condition = policy["conditions"][0]["condition_threshold"][0]
    assert condition["threshold_value"] == "${local.health_thresholds[each.value.threshold]}"
    assert condition["duration"] == '"${local.health_duration_s}s"'
    assert policy["severity"] == "${local.health_severity}"
    assert local["health_duration_s"] == (
        "${local.service_health.window_s * local.service_health.consecutive}"
    )
    # No numeric threshold literal in the policies, but the alerts topic's "any message" (> 0).
    text = (TERRAFORM / "monitoring.tf").read_text()
    assert re.findall(r"threshold_value\s*=\s*([0-9.]+)", text) == ["0"]
    for doc in parsed.values():
        assert THRESHOLDS_EXPR not in json.dumps(doc) or doc is parsed[TERRAFORM / "thresholds.tf"]


def test_alert_policies_document_and_notify(parsed: dict[Path, dict[str, Any]]) -> None:
    resources = _resources(parsed)
    policies = {k: v for k, v in resources.items() if k[0] == "google_monitoring_alert_policy"}
    assert set(policies) == {
        ("google_monitoring_alert_policy", "service_health"),
        ("google_monitoring_alert_policy", "pipeline_alerts"),
    }
    for body in policies.values():
        assert body["notification_channels"] == "${local.notification_channels}"
        doc = body["documentation"][0]
        assert _unquote(doc["mime_type"]) == "text/markdown"
        assert "docs/specs/monitoring.md" in str(doc["content"]) or "runbook_header" in str(
            doc["content"]
        )
    alerts = policies[("google_monitoring_alert_policy", "pipeline_alerts")]
    condition = alerts["conditions"][0]["condition_threshold"][0]
    assert 'local.topic_filter["alerts"]' in condition["filter"]
    assert "send_message_operation_count" in _locals(parsed)["publish_count"]
    content = str(alerts["documentation"][0]["content"])
    for field in ("alert_id", "kind", "metric", "threshold", "model_version", "feature"):
        assert f"`{field}`" in content, field
    channels = resources[("google_monitoring_notification_channel", "email")]
    assert channels["for_each"] == "${toset(var.alert_emails)}"
    variables = _blocks(parsed, "variable")
    assert variables["notification_channels"]["default"] == []
    assert variables["alert_emails"]["default"] == []
    assert '"monitoring.googleapis.com"' in (TERRAFORM / "services.tf").read_text()


def test_dashboard_charts_the_documented_metric_types(parsed: dict[Path, dict[str, Any]]) -> None:
    local = _locals(parsed)
    filters = [
        str(data_set["filter"]) for chart in local["dashboard_charts"] for data_set in chart["sets"]
    ]
    # Substitute the string locals the filters are built from (user_metric, publish_count, ...).
    strings = {k: str(_unquote(v)) for k, v in local.items() if isinstance(v, str)}
    for _ in range(3):
        filters = [re.sub(r"\$\{local\.(\w+)\}", lambda m: strings[m[1]], f) for f in filters]
    charted = {m for f in filters for m in re.findall(r'metric\.type = \\"([^"\\]+)', f)}
    assert DASHBOARD_METRIC_TYPES <= charted, DASHBOARD_METRIC_TYPES - charted
    dashboard = _resources(parsed)[("google_monitoring_dashboard", "rillet")]
    assert dashboard["dashboard_json"] == "${jsonencode(local.dashboard)}"
    variables = _blocks(parsed, "variable")
    from pipelines.app.deploy import DeployConfig

    assert _unquote(variables["dataflow_job_name"]["default"]) == DeployConfig.job_name


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The monitoring locals evaluated by Terraform itself: variables.tf, thresholds.tf and the
    locals blocks of locals.tf and monitoring.tf (minus the two that name provider resources), in
    a copy of the repository layout, so path.module/../pipelines/... resolves as in terraform/."""
    root = tmp_path_factory.mktemp("tf")
    module = root / "terraform"
    (root / "pipelines" / "core").mkdir(parents=True)
    shutil.copy(THRESHOLDS_FILE, root / "pipelines" / "core" / THRESHOLDS_FILE.name)
    module.mkdir()
    for name in ("variables.tf", "thresholds.tf"):
        shutil.copy(TERRAFORM / name, module / name)
    blocks = []
    for name in ("locals.tf", "monitoring.tf"):
        for block in re.findall(
            r"^locals \{\n.*?^\}\n", (TERRAFORM / name).read_text(), re.M | re.S
        ):
            lines = block.splitlines()
            keep = [
                line
                for line in lines
                if not re.match(r"\s*(pubsub_service_agent|notification_channels)\s*=", line)
            ]
            blocks.append("\n".join(keep))
    (module / "locals.tf").write_text("\n\n".join(blocks) + "\n")
    (module / "outputs.tf").write_text(
        'output "dashboard" { value = local.dashboard }\n'
        'output "health_thresholds" { value = local.health_thresholds }\n'
        'output "health_policies" { value = local.health_policies }\n'
        'output "health_window_s" { value = local.health_window_s }\n'
        'output "health_duration_s" { value = local.health_duration_s }\n'
        'output "health_severity" { value = local.health_severity }\n'
        'output "in_job_severity" { value = local.in_job_severity }\n'
    )
    assert _run_terraform(module, "init", "-backend=false", "-input=false").returncode == 0
    applied = _run_terraform(
        module, "apply", "-auto-approve", "-input=false", "-no-color", "-var", "project_id=p"
    )
    assert applied.returncode == 0, applied.stderr
    out = _run_terraform(module, "output", "-json")
    assert out.returncode == 0, out.stderr
    return {name: spec["value"] for name, spec in json.loads(out.stdout).items()}


def test_evaluated_alert_thresholds_equal_the_thresholds_file(evaluated: dict[str, Any]) -> None:
    thresholds = json.loads(THRESHOLDS_FILE.read_text())
    health = thresholds["service_health"]
    for policy in evaluated["health_policies"].values():
        key = policy["threshold"]
        assert evaluated["health_thresholds"][key] == health[key]
    assert evaluated["health_window_s"] == health["window_s"]
    assert evaluated["health_duration_s"] == health["window_s"] * health["consecutive"]
    assert evaluated["health_duration_s"] % 60 == 0  # Cloud Monitoring durations: whole minutes
    assert evaluated["health_severity"] == health["severity"].upper()
    kinds = ("drift", "data_quality", "online_quality")
    expected = (
        "CRITICAL" if any(thresholds[k]["severity"] == "critical" for k in kinds) else "WARNING"
    )
    assert evaluated["in_job_severity"] == expected


def test_evaluated_dashboard_references_the_documented_metrics(evaluated: dict[str, Any]) -> None:
    dashboard = evaluated["dashboard"]
    assert dashboard["displayName"] == "rillet (dev)"
    tiles = dashboard["mosaicLayout"]["tiles"]
    assert all(t["xPos"] + t["width"] <= dashboard["mosaicLayout"]["columns"] for t in tiles)
    data_sets = [d for t in tiles for d in t["widget"]["xyChart"]["dataSets"]]
    filters = [d["timeSeriesQuery"]["timeSeriesFilter"]["filter"] for d in data_sets]
    charted = {m for f in filters for m in re.findall(r'metric\.type = "([^"]+)"', f)}
    assert DASHBOARD_METRIC_TYPES <= charted, DASHBOARD_METRIC_TYPES - charted
    job = 'resource.label.job_name = "rillet"'
    dataflow = [f for f in filters if "dataflow.googleapis.com/" in f]
    assert dataflow and all(job in f for f in dataflow)
    # The input subscriptions, the dead-letter and alerts topics, by name.
    assert any(
        'monitoring.regex.full_match("labels-rillet|transactions-rillet")' in f for f in filters
    )
    assert any('resource.label.topic_id = "dead-letter"' in f for f in filters)
    assert any('resource.label.topic_id = "alerts"' in f for f in filters)
    # Every Beam metric the job and its Monitor stage export is matched by some user_counter chart.
    patterns = [
        re.search(r'metric\.label\.metric_name = monitoring\.regex\.full_match\("([^"]+)"\)', f)
        for f in filters
        if "job/user_counter" in f
    ]
    regexes = [re.compile(p.group(1)) for p in patterns if p]
    for name in USER_METRIC_NAMES:
        assert any(r.fullmatch(name) for r in regexes), name
    # Threshold lines come from the thresholds file too.
    health = json.loads(THRESHOLDS_FILE.read_text())["service_health"]
    lines = {
        line["label"]: line["value"]
        for t in tiles
        for line in t["widget"]["xyChart"]["thresholds"]
        if line["label"].startswith("service_health.")
    }
    assert lines == {f"service_health.{k}": health[k] for k in HEALTH_KEYS | {"latency_p99_ms"}}


@pytest.mark.parametrize("example", TFVARS_EXAMPLES, ids=lambda p: p.name)
def test_tfvars_examples_pass_the_variable_validation(tmp_path: Path, example: Path) -> None:
    """Every validation block of variables.tf accepts the examples (Terraform, no provider)."""
    shutil.copy(TERRAFORM / "variables.tf", tmp_path / "variables.tf")
    shutil.copy(example, tmp_path / "example.tfvars")
    assert _run_terraform(tmp_path, "init", "-backend=false", "-input=false").returncode == 0
    result = _run_terraform(
        tmp_path, "plan", "-input=false", "-no-color", "-var-file=example.tfvars"
    )
    assert result.returncode == 0, result.stderr
