# The APIs the product uses. disable_on_destroy = false: destroying rillet must not switch off an API
# that other workloads in the project rely on.
locals {
  services = toset(concat(
    [
      "dataflow.googleapis.com",         # the jobs
      "compute.googleapis.com",          # Dataflow worker VMs
      "pubsub.googleapis.com",           # input, prediction and dead-letter topics
      "bigtable.googleapis.com",         # feature store data plane
      "bigtableadmin.googleapis.com",    # instance, table and GC policies
      "firestore.googleapis.com",        # the Datastore-mode database resource
      "datastore.googleapis.com",        # Prediction entities
      "storage.googleapis.com",          # staging, temp, templates, models
      "artifactregistry.googleapis.com", # the Flex Template image
      "iam.googleapis.com",              # the worker service account
      "run.googleapis.com",              # the weekly retraining job
      "cloudscheduler.googleapis.com",   # its weekly trigger
      "monitoring.googleapis.com",       # dashboard, alert policies, notification channels
    ],
    var.kms_key_name == null ? [] : ["cloudkms.googleapis.com"],
  ))
}

resource "google_project_service" "required" {
  for_each = var.enable_apis ? local.services : toset([])

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}
