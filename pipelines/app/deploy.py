"""``rillet deploy``: build the Flex Template image and template, launch or update the job.

Three steps, each one command a user can also run by hand (``rillet deploy --dry-run`` prints
them):

1. build and push the image (``dataflow/Dockerfile``: launcher and SDK container in one image);
2. build the Flex Template spec (``gcloud dataflow flex-template build``) with
   ``dataflow/metadata.json``;
3. run it (``gcloud dataflow flex-template run``): streaming engine, autoscaling bounds, the
   worker service account from Terraform, no public IPs, the image as the SDK container. With
   ``--update`` the running job of the same name is replaced in place; its state carries over
   because the step names are stable (tests/unit/test_pipeline_graph.py pins them).

Nothing here was run against Google Cloud (no network on the build machine); the commands are
checked by tests/unit/test_deploy.py.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

__all__ = ["DeployConfig", "DeployError", "deploy_commands", "run_commands"]


class DeployError(RuntimeError):
    """A deployment step cannot run (a missing tool, a failed command)."""


@dataclass(frozen=True)
class DeployConfig:
    """Where and how to deploy (names match terraform/ outputs)."""

    project: str
    region: str
    bucket: str  # the staging/templates/models bucket, without gs://
    repository: str  # the Artifact Registry repository id
    service_account: str  # the Dataflow worker service account e-mail
    job_name: str = "rillet"
    version: str = "dev"
    model_dir: str = ""  # default gs://<bucket>/models
    model_version: str = "champion"
    max_workers: int = 10
    num_workers: int = 1
    subnetwork: str | None = None
    update: bool = False

    @property
    def image(self) -> str:
        return (
            f"{self.region}-docker.pkg.dev/{self.project}/{self.repository}/rillet:{self.version}"
        )

    @property
    def template(self) -> str:
        return f"gs://{self.bucket}/templates/rillet-{self.version}.json"


def deploy_commands(config: DeployConfig) -> list[list[str]]:
    """The commands of the three steps, in order."""
    model_dir = config.model_dir or f"gs://{config.bucket}/models"
    parameters = ",".join(
        [
            f"model_dir={model_dir}",
            f"model_version={config.model_version}",
            f"sdk_container_image={config.image}",
            f"temp_location=gs://{config.bucket}/temp",
            f"staging_location=gs://{config.bucket}/staging",
        ]
    )
    run = [
        "gcloud",
        "dataflow",
        "flex-template",
        "run",
        config.job_name,
        f"--project={config.project}",
        f"--region={config.region}",
        f"--template-file-gcs-location={config.template}",
        f"--service-account-email={config.service_account}",
        "--enable-streaming-engine",
        "--disable-public-ips",
        f"--num-workers={config.num_workers}",
        f"--max-workers={config.max_workers}",
        f"--parameters={parameters}",
    ]
    if config.subnetwork:
        run.append(f"--subnetwork={config.subnetwork}")
    if config.update:
        run.append("--update")
    return [
        ["docker", "build", "-f", "dataflow/Dockerfile", "-t", config.image, "."],
        ["docker", "push", config.image],
        [
            "gcloud",
            "dataflow",
            "flex-template",
            "build",
            config.template,
            f"--project={config.project}",
            f"--image={config.image}",
            "--sdk-language=PYTHON",
            "--metadata-file=dataflow/metadata.json",
        ],
        run,
    ]


def run_commands(commands: list[list[str]]) -> None:
    """Runs the commands in order, stopping at the first failure."""
    for tool in sorted({c[0] for c in commands}):
        if shutil.which(tool) is None:
            raise DeployError(
                f"{tool} is not installed: install "
                + ("Docker" if tool == "docker" else "the Google Cloud SDK (gcloud)")
                + " or run the printed commands elsewhere (rillet deploy --dry-run)"
            )
    for command in commands:
        result = subprocess.run(command, check=False)
        if result.returncode != 0:
            raise DeployError(f"{' '.join(command[:4])} ... failed ({result.returncode})")
