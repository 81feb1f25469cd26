# Optional CMEK: when var.kms_key_name is set, every Google service agent that encrypts rillet's data with it
# gets cryptoKeyEncrypterDecrypter on that one key (not on the key ring or project).
# Agents: Pub/Sub (topics), Bigtable (cluster), Cloud Storage (bucket), Artifact Registry (repository),
# Dataflow and Compute Engine (worker disks and job state, per the Dataflow CMEK guide).
data "google_storage_project_service_account" "gcs" {
  project = var.project_id
}

locals {
  project_number = data.google_project.this.number
  kms_service_agents = var.kms_key_name == null ? {} : {
    pubsub            = "serviceAccount:service-${local.project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"
    bigtable          = "serviceAccount:service-${local.project_number}@gcp-sa-bigtable.iam.gserviceaccount.com"
    storage           = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
    artifact_registry = "serviceAccount:service-${local.project_number}@gcp-sa-artifactregistry.iam.gserviceaccount.com"
    dataflow          = "serviceAccount:service-${local.project_number}@dataflow-service-producer-prod.iam.gserviceaccount.com"
    compute           = "serviceAccount:service-${local.project_number}@compute-system.iam.gserviceaccount.com"
  }
}

resource "google_kms_crypto_key_iam_member" "service_agents" {
  for_each = local.kms_service_agents

  crypto_key_id = var.kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = each.value

  depends_on = [google_project_service.required]
}
