# Pipeline topics: transactions and labels in; predictions, application rejects and alerts out.
resource "google_pubsub_topic" "main" {
  for_each = local.topics

  name                       = each.value
  labels                     = local.common_labels
  kms_key_name               = var.kms_key_name
  message_retention_duration = var.message_retention_duration

  dynamic "schema_settings" {
    for_each = var.enable_input_schemas && contains(["transactions", "labels"], each.key) ? [each.key] : []
    content {
      schema   = google_pubsub_schema.input[schema_settings.value].id
      encoding = "JSON"
    }
  }

  depends_on = [google_project_service.required, google_kms_crypto_key_iam_member.service_agents]
}

# One dead-letter topic per topic: where Pub/Sub parks messages its subscriptions cannot deliver.
resource "google_pubsub_topic" "dead_letter" {
  for_each = local.topics

  name                       = "${each.value}-undeliverable"
  labels                     = local.common_labels
  kms_key_name               = var.kms_key_name
  message_retention_duration = var.message_retention_duration

  depends_on = [google_project_service.required, google_kms_crypto_key_iam_member.service_agents]
}

# Subscriptions on the dead-letter topics, so parked messages are kept and can be inspected/replayed.
resource "google_pubsub_subscription" "dead_letter" {
  for_each = local.topics

  name                       = "${each.value}-undeliverable-monitor"
  topic                      = google_pubsub_topic.dead_letter[each.key].id
  labels                     = local.common_labels
  ack_deadline_seconds       = 60
  message_retention_duration = var.message_retention_duration
  retain_acked_messages      = false

  expiration_policy {
    ttl = ""
  }
}

# Subscriptions: the Dataflow job's inputs and the monitors of its outputs, with dead-lettering.
resource "google_pubsub_subscription" "main" {
  for_each = local.subscriptions

  name                       = each.key
  topic                      = google_pubsub_topic.main[each.value.topic].id
  labels                     = local.common_labels
  ack_deadline_seconds       = var.ack_deadline_seconds
  message_retention_duration = var.message_retention_duration
  # Keep acked messages on the job's inputs so a Seek can replay them after a bad deploy.
  retain_acked_messages = each.value.dataflow

  # Never expire: a stopped job must find its subscription (and backlog) when it restarts.
  expiration_policy {
    ttl = ""
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter[each.value.topic].id
    max_delivery_attempts = var.max_delivery_attempts
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  depends_on = [
    google_pubsub_topic_iam_member.dead_letter_publisher,
  ]
}

# Optional Avro schemas of the input events (Pub/Sub schemas cannot be JSON Schema).
resource "google_pubsub_schema" "input" {
  for_each = var.enable_input_schemas ? toset(["transactions", "labels"]) : toset([])

  name = "rillet-${each.key}-v1"
  type = "AVRO"
  definition = jsonencode({
    type      = "record"
    name      = each.key == "transactions" ? "Transaction" : "Label"
    namespace = "rillet"
    fields = concat(
      [
        { name = "schema_version", type = "int" },
        { name = "transaction_id", type = "string" },
        { name = "tx_datetime", type = "string" },
        { name = "customer_id", type = "string" },
        { name = "terminal_id", type = "string" },
      ],
      each.key == "transactions" ? [{ name = "amount", type = "double" }] : [{ name = "is_fraud", type = "int" }],
    )
  })

  depends_on = [google_project_service.required]
}

# Pub/Sub service agent publishes undeliverable messages to the dead-letter topics.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = local.topics

  topic  = google_pubsub_topic.dead_letter[each.key].name
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

# Pub/Sub service agent acks forwarded messages on the source subscriptions.
resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each = local.subscriptions

  subscription = google_pubsub_subscription.main[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}
