"""rillet deploy: the commands it runs (checked offline; nothing reaches Google Cloud)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from pipelines.app.deploy import DeployConfig, DeployError, deploy_commands, run_commands

ROOT = Path(__file__).resolve().parents[2]
CONFIG = DeployConfig(
    project="p",
    region="europe-west1",
    bucket="b",
    repository="rillet",
    service_account="dataflow@p.iam.gserviceaccount.com",
    version="1.2.3",
)


def test_commands_build_one_image_and_launch_it_hardened() -> None:
    build, push, template, run = deploy_commands(CONFIG)
    image = "europe-west1-docker.pkg.dev/p/rillet/rillet:1.2.3"
    assert build[:4] == ["docker", "build", "-f", "dataflow/Dockerfile"] and image in build
    assert push == ["docker", "push", image]
    assert f"--image={image}" in template
    assert "--metadata-file=dataflow/metadata.json" in template
    assert "gs://b/templates/rillet-1.2.3.json" in template
    for flag in (
        "--enable-streaming-engine",
        "--disable-public-ips",
        "--service-account-email=dataflow@p.iam.gserviceaccount.com",
        "--max-workers=10",
        "--template-file-gcs-location=gs://b/templates/rillet-1.2.3.json",
    ):
        assert flag in run
    parameters = next(a for a in run if a.startswith("--parameters="))
    assert f"sdk_container_image={image}" in parameters  # launcher and workers: one image
    assert "model_dir=gs://b/models" in parameters
    assert "--update" not in run
    # The files the commands name exist.
    assert (ROOT / "dataflow" / "Dockerfile").is_file()
    assert (ROOT / "dataflow" / "metadata.json").is_file()


def test_update_replaces_the_running_job() -> None:
    run = deploy_commands(DeployConfig(**{**CONFIG.__dict__, "update": True}))[-1]
    assert run[-1] == "--update" and "rillet" in run


def test_missing_tools_give_a_clear_message(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("shutil.which", lambda tool: None)
    try:
        run_commands(deploy_commands(CONFIG))
    except DeployError as exc:
        assert "is not installed" in str(exc)
    else:  # pragma: no cover - the assertion is the point
        raise AssertionError("expected DeployError")


def test_cli_dry_run_prints_the_commands() -> None:
    from pipelines.app.cli import app

    out = CliRunner().invoke(
        app,
        [
            "deploy",
            "--project=my-project",
            "--region=europe-west1",
            "--bucket=my-bucket",
            "--repository=rillet",
            "--service-account=dataflow@p.iam.gserviceaccount.com",
            "--dry-run",
        ],
    )
    assert out.exit_code == 0
    lines = out.output.strip().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("gcloud dataflow flex-template run rillet")
