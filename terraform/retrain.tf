# Weekly retraining (issue 14): a Cloud Run job runs `rillet retrain` from the project's image
# (dataflow/Dockerfile, pushed by `rillet deploy` to the Artifact Registry repository), registers the
# new version as the challenger, then lets `rillet models auto-promote` decide; Cloud Scheduler starts
# it on var.retrain_schedule. Terraform only declares them: nothing here runs a job at apply time.

locals {
  retrain_image          = coalesce(var.retrain_image, "${var.region}-docker.pkg.dev/${var.project_id}/${var.artifact_repository_id}/rillet:latest")
  retrain_history_bucket = coalesce(var.retrain_history_bucket, local.bucket_name)
  retrain_history_uri    = "gs://${local.retrain_history_bucket}/${trimsuffix(var.retrain_history_prefix, "/")}"
  retrain_model_uri      = "gs://${local.bucket_name}/${trimsuffix(var.retrain_model_prefix, "/")}"
  retrain_member         = "serviceAccount:${google_service_account.retrain.email}"

  # The job's command line: retrain and register, then promote if the challenger wins. `set -e`: a
  # failed retrain promotes nothing.
  retrain_script = join("\n", [
    "set -eu",
    "rillet retrain --history ${local.retrain_history_uri} --model-dir ${local.retrain_model_uri} --register challenger",
    "rillet models auto-promote --model-dir ${local.retrain_model_uri}",
  ])
}

# Identity of the retraining job: reads the event history, writes model versions, reads Datastore.
resource "google_service_account" "retrain" {
  account_id   = var.retrain_service_account_id
  display_name = "rillet weekly retraining (${var.environment})"
  description  = "Runs `rillet retrain` and `rillet models auto-promote` as a Cloud Run job."

  depends_on = [google_project_service.required]
}

# Identity Cloud Scheduler calls the Cloud Run Admin API with: may run the retraining job, nothing else.
resource "google_service_account" "retrain_scheduler" {
  account_id   = "${var.retrain_service_account_id}-trigger"
  display_name = "rillet weekly retraining trigger (${var.environment})"
  description  = "Cloud Scheduler's identity to start the rillet-retrain Cloud Run job."

  depends_on = [google_project_service.required]
}

# Read the event history (transactions*/labels* files) under its prefix only. Object listing is a
# bucket-level check, hence the bucket itself in the condition; object reads stay within the prefix.
resource "google_storage_bucket_iam_member" "retrain_history_reader" {
  bucket = local.retrain_history_bucket
  role   = "roles/storage.objectViewer"
  member = local.retrain_member

  condition {
    title       = "rillet-history-prefix"
    description = "Only the event history objects (and listing the bucket)."
    expression  = "resource.name == \"projects/_/buckets/${local.retrain_history_bucket}\" || resource.name.startsWith(\"projects/_/buckets/${local.retrain_history_bucket}/objects/${var.retrain_history_prefix}\")"
  }
}

# Write model versions and the registry under the model prefix only (objectUser: create, read,
# overwrite and delete objects; no IAM or bucket settings).
resource "google_storage_bucket_iam_member" "retrain_models_writer" {
  bucket = google_storage_bucket.rillet.name
  role   = "roles/storage.objectUser"
  member = local.retrain_member

  condition {
    title       = "rillet-models-prefix"
    description = "Only the model versions and registry objects (and listing the bucket)."
    expression  = "resource.name == \"projects/_/buckets/${google_storage_bucket.rillet.name}\" || resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.rillet.name}/objects/${var.retrain_model_prefix}\")"
  }
}

# Datastore IAM is project-level only: read the served predictions (shadow scores) to compare versions.
resource "google_project_iam_member" "retrain_datastore_viewer" {
  project = var.project_id
  role    = "roles/datastore.viewer"
  member  = local.retrain_member
}

resource "google_cloud_run_v2_job" "retrain" {
  name                = "rillet-retrain"
  location            = var.region
  deletion_protection = false
  labels              = local.common_labels

  template {
    labels      = local.common_labels
    task_count  = 1
    parallelism = 1

    template {
      service_account = google_service_account.retrain.email
      timeout         = var.retrain_timeout
      max_retries     = 0
      encryption_key  = var.kms_key_name

      containers {
        image   = local.retrain_image
        command = ["/bin/sh", "-c"]
        args    = [local.retrain_script]

        resources {
          limits = {
            cpu    = var.retrain_cpu
            memory = var.retrain_memory
          }
        }

        env {
          name  = "PYTHONUNBUFFERED"
          value = "1"
        }
      }
    }
  }

  depends_on = [google_project_service.required, google_kms_crypto_key_iam_member.service_agents]
}

# The trigger may run this job only.
resource "google_cloud_run_v2_job_iam_member" "retrain_trigger" {
  project  = var.project_id
  location = google_cloud_run_v2_job.retrain.location
  name     = google_cloud_run_v2_job.retrain.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.retrain_scheduler.email}"
}

resource "google_cloud_scheduler_job" "retrain" {
  name        = "rillet-retrain-weekly"
  description = "Starts the rillet-retrain Cloud Run job (rillet retrain, then models auto-promote)."
  region      = var.region
  schedule    = var.retrain_schedule
  time_zone   = var.retrain_time_zone
  paused      = var.retrain_paused

  retry_config {
    retry_count = 1
  }

  http_target {
    http_method = "POST"
    uri         = "https://run.googleapis.com/v2/projects/${var.project_id}/locations/${var.region}/jobs/${google_cloud_run_v2_job.retrain.name}:run"

    oauth_token {
      service_account_email = google_service_account.retrain_scheduler.email
      scope                 = "https://www.googleapis.com/auth/cloud-platform"
    }
  }

  depends_on = [google_cloud_run_v2_job_iam_member.retrain_trigger]
}
