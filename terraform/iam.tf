# Identity of the Dataflow workers: only what the streaming job needs, bound on the narrowest resource.
resource "google_service_account" "dataflow" {
  account_id   = var.dataflow_service_account_id
  display_name = "rillet Dataflow workers (${var.environment})"
  description  = "Runs the rillet streaming and backfill pipelines on Dataflow."

  depends_on = [google_project_service.required]
}

locals {
  dataflow_member = "serviceAccount:${google_service_account.dataflow.email}"
}

# Workers must hold roles/dataflow.worker on the project (Dataflow has no narrower scope).
resource "google_project_iam_member" "dataflow_worker" {
  project = var.project_id
  role    = "roles/dataflow.worker"
  member  = local.dataflow_member
}

# Datastore (Firestore) IAM is project-level only: the job upserts Prediction entities.
resource "google_project_iam_member" "datastore_user" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = local.dataflow_member
}

# The job pulls and acks its two input subscriptions.
resource "google_pubsub_subscription_iam_member" "dataflow_subscriber" {
  for_each = { for k, v in local.subscriptions : k => v if v.dataflow }

  subscription = google_pubsub_subscription.main[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.dataflow_member
}

# Dataflow's Pub/Sub source reads subscription metadata (watermark tracking) with pubsub.viewer.
resource "google_pubsub_subscription_iam_member" "dataflow_viewer" {
  for_each = { for k, v in local.subscriptions : k => v if v.dataflow }

  subscription = google_pubsub_subscription.main[each.key].name
  role         = "roles/pubsub.viewer"
  member       = local.dataflow_member
}

# The job publishes predictions, application rejects (dead-letter) and monitoring alerts only.
resource "google_pubsub_topic_iam_member" "dataflow_publisher" {
  for_each = toset(["predictions", "dead-letter", "alerts"])

  topic  = google_pubsub_topic.main[each.key].name
  role   = "roles/pubsub.publisher"
  member = local.dataflow_member
}

# The job reads and writes the feature table on this instance only.
resource "google_bigtable_instance_iam_member" "dataflow_user" {
  instance = google_bigtable_instance.rillet.name
  role     = "roles/bigtable.user"
  member   = local.dataflow_member
}

# Staging, temp, template and model objects in the job's own bucket.
resource "google_storage_bucket_iam_member" "dataflow_objects" {
  bucket = google_storage_bucket.rillet.name
  role   = "roles/storage.objectAdmin"
  member = local.dataflow_member
}

# Workers pull the SDK container image from the repository.
resource "google_artifact_registry_repository_iam_member" "dataflow_reader" {
  location   = google_artifact_registry_repository.rillet.location
  repository = google_artifact_registry_repository.rillet.name
  role       = "roles/artifactregistry.reader"
  member     = local.dataflow_member
}

# Whoever launches the job (a CI service account, a release engineer): var.deployer_members.
# Launching as the worker account needs actAs on that one account only.
resource "google_service_account_iam_member" "deployer_act_as" {
  for_each = toset(var.deployer_members)

  service_account_id = google_service_account.dataflow.name
  role               = "roles/iam.serviceAccountUser"
  member             = each.value
}

# Creating, updating, draining and cancelling jobs: Dataflow job IAM is project-level only.
resource "google_project_iam_member" "deployer_dataflow" {
  # checkov:skip=CKV_GCP_49: Dataflow has no scope below the project for jobs; the deployers can act as the rillet worker account only (deployer_act_as), so they cannot run jobs as any other identity.
  for_each = toset(var.deployer_members)

  project = var.project_id
  role    = "roles/dataflow.developer"
  member  = each.value
}

# `rillet deploy` pushes the image to this repository...
resource "google_artifact_registry_repository_iam_member" "deployer_writer" {
  for_each = toset(var.deployer_members)

  location   = google_artifact_registry_repository.rillet.location
  repository = google_artifact_registry_repository.rillet.name
  role       = "roles/artifactregistry.writer"
  member     = each.value
}

# ...and writes the template spec and staged files to this bucket.
resource "google_storage_bucket_iam_member" "deployer_objects" {
  for_each = toset(var.deployer_members)

  bucket = google_storage_bucket.rillet.name
  role   = "roles/storage.objectAdmin"
  member = each.value
}
