# Feature store instance: SSD + autoscaling in prod, one small HDD node in dev.
resource "google_bigtable_instance" "rillet" {
  name                = var.bigtable_instance_id
  display_name        = "rillet features (${var.environment})"
  deletion_protection = var.deletion_protection
  labels              = local.common_labels

  cluster {
    cluster_id   = "${var.bigtable_instance_id}-c1"
    zone         = var.bigtable_zone
    storage_type = local.is_prod ? "SSD" : "HDD"
    num_nodes    = local.is_prod ? null : 1
    kms_key_name = var.kms_key_name

    dynamic "autoscaling_config" {
      for_each = local.is_prod ? [1] : []
      content {
        min_nodes  = var.bigtable_min_nodes
        max_nodes  = var.bigtable_max_nodes
        cpu_target = var.bigtable_cpu_target
      }
    }
  }

  depends_on = [google_project_service.required, google_kms_crypto_key_iam_member.service_agents]
}

# The feature table (README "Feature store schema"): one row per customer#/terminal# entity.
resource "google_bigtable_table" "features" {
  name          = var.bigtable_table_id
  instance_name = google_bigtable_instance.rillet.name

  deletion_protection = var.deletion_protection ? "PROTECTED" : "UNPROTECTED"

  column_family {
    family = "tx"
  }
  column_family {
    family = "label"
  }
  column_family {
    family = "features"
  }
}

# tx and label hold window state: 1 version per column, dropped after the longest lookback + margin.
resource "google_bigtable_gc_policy" "events" {
  for_each = toset(["tx", "label"])

  instance_name   = google_bigtable_instance.rillet.name
  table           = google_bigtable_table.features.name
  column_family   = each.value
  deletion_policy = "ABANDON"

  gc_rules = jsonencode({
    mode = "union"
    rules = [
      { max_version = 1 },
      { max_age = "${var.bigtable_event_max_age_days * 24}h" },
    ]
  })
}

# features holds the latest value of each feature: 1 version per column.
resource "google_bigtable_gc_policy" "features" {
  instance_name   = google_bigtable_instance.rillet.name
  table           = google_bigtable_table.features.name
  column_family   = "features"
  deletion_policy = "ABANDON"

  gc_rules = jsonencode({
    rules = [{ max_version = 1 }]
  })
}
