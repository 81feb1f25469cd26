# One bucket for Dataflow staging/temp, Flex Template specs and model versions.
resource "google_storage_bucket" "rillet" {
  # checkov:skip=CKV_GCP_62: access logs would need a second (log) bucket; Cloud Audit Logs (Data Access) cover object access
  name                        = local.bucket_name
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = local.common_labels

  versioning {
    enabled = true
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }

  # Dataflow temp and staging files are disposable after a week.
  lifecycle_rule {
    condition {
      age            = var.temp_object_age_days
      matches_prefix = ["temp/", "staging/"]
    }
    action {
      type = "Delete"
    }
  }

  # Overwritten or deleted versions (templates, models) are kept for a while, then removed.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_age_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  # Abandoned multipart/resumable uploads.
  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  depends_on = [google_project_service.required, google_kms_crypto_key_iam_member.service_agents]
}
