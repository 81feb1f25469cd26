# Firestore in Datastore mode: holds kind Prediction (key name = transaction_id, upserted).
# No composite indexes: the product reads and writes Prediction entities by key only.
resource "google_firestore_database" "datastore" {
  name                              = "(default)"
  location_id                       = var.firestore_location
  type                              = "DATASTORE_MODE"
  concurrency_mode                  = "OPTIMISTIC"
  app_engine_integration_mode       = "DISABLED"
  point_in_time_recovery_enablement = local.is_prod ? "POINT_IN_TIME_RECOVERY_ENABLED" : "POINT_IN_TIME_RECOVERY_DISABLED"
  delete_protection_state           = var.deletion_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  deletion_policy                   = var.deletion_protection ? "ABANDON" : "DELETE"

  depends_on = [google_project_service.required]
}
