"""terraform/: parses, is documented and least-privilege, and matches the pipeline's resource names.

Terraform is not run here (no providers, no network): these checks are static, plus, in the
slow tests, checkov (offline, in its own venv via terraform/check.sh) and the provider schema
check (terraform/check_schema.py).
"""

from __future__ import annotations

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
    assert checked >= 20
    assert problems == []


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
        (tmp_path / path.name).write_text(text)
    _, problems = checker.check(tmp_path)
    joined = "\n".join(problems)
    assert "unknown argument or block 'famly'" in joined
    assert "required argument family is not set" in joined
    assert "'OPTIMISTICAL' is not one of" in joined
    assert "unknown argument or block 'ack_deadline_secs'" in joined
    assert len(problems) == 4, joined


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
