# Docker repository for the Flex Template image (launcher and SDK container in one image).
resource "google_artifact_registry_repository" "rillet" {
  location      = var.region
  repository_id = var.artifact_repository_id
  description   = "rillet Flex Template image"
  format        = "DOCKER"
  kms_key_name  = var.kms_key_name
  labels        = local.common_labels

  docker_config {
    immutable_tags = false
  }

  depends_on = [google_project_service.required, google_kms_crypto_key_iam_member.service_agents]
}
