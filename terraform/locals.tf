locals {
  common_labels = merge({ app = "rillet", environment = var.environment }, var.labels)
  is_prod       = var.environment == "prod"
  bucket_name   = coalesce(var.bucket_name, "${var.project_id}-rillet")

  # Topics the pipeline reads or writes (names = RilletOptions / pipelines.app.local.Topology defaults).
  # alerts: the Monitor stage's alerts (docs/specs/monitoring.md, --alerts_topic).
  topics = {
    transactions = "transactions"
    labels       = "labels"
    predictions  = "predictions"
    dead-letter  = "dead-letter"
    alerts       = "alerts"
  }

  # Subscriptions: name -> source topic key. The *-rillet ones are read by the Dataflow job; the
  # *-monitor ones let operators read predictions, rejects and alerts. Downstream consumers get their
  # own subscriptions (var.prediction_consumers, consumers.tf).
  subscriptions = {
    transactions-rillet = { topic = "transactions", dataflow = true }
    labels-rillet       = { topic = "labels", dataflow = true }
    predictions-monitor = { topic = "predictions", dataflow = false }
    dead-letter-monitor = { topic = "dead-letter", dataflow = false }
    alerts-monitor      = { topic = "alerts", dataflow = false }
  }

  # Pub/Sub service agent: forwards undeliverable messages to dead-letter topics.
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}
