# Downstream consumers of the predictions topic, declared as data (var.prediction_consumers): each
# gets its own subscription (optionally filtered, e.g. attributes.risk_band = "high"), its own
# dead-letter topic, and roles/pubsub.subscriber on that one subscription, never on the topic or
# the project, so a consumer reads its own copy of the stream and nothing else.
locals {
  prediction_consumers = { for c in var.prediction_consumers : c.name => c }
}

resource "google_pubsub_subscription" "consumer" {
  for_each = local.prediction_consumers

  name                       = "${each.key}-predictions"
  topic                      = google_pubsub_topic.main["predictions"].id
  filter                     = each.value.filter
  labels                     = merge(local.common_labels, { consumer = each.key })
  ack_deadline_seconds       = var.ack_deadline_seconds
  message_retention_duration = var.message_retention_duration
  retain_acked_messages      = false

  # Never expire: a consumer that stops reading for a while must find its backlog.
  expiration_policy {
    ttl = ""
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.consumer_dead_letter[each.key].id
    max_delivery_attempts = var.max_delivery_attempts
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  depends_on = [google_pubsub_topic_iam_member.consumer_dead_letter_publisher]
}

# One dead-letter topic per consumer: messages it failed to process max_delivery_attempts times.
resource "google_pubsub_topic" "consumer_dead_letter" {
  for_each = local.prediction_consumers

  name                       = "${each.key}-predictions-undeliverable"
  labels                     = merge(local.common_labels, { consumer = each.key })
  kms_key_name               = var.kms_key_name
  message_retention_duration = var.message_retention_duration

  depends_on = [google_project_service.required, google_kms_crypto_key_iam_member.service_agents]
}

# Keeps each consumer's undeliverable messages for inspection and replay (operators).
resource "google_pubsub_subscription" "consumer_dead_letter" {
  for_each = local.prediction_consumers

  name                       = "${each.key}-predictions-undeliverable-monitor"
  topic                      = google_pubsub_topic.consumer_dead_letter[each.key].id
  labels                     = merge(local.common_labels, { consumer = each.key })
  ack_deadline_seconds       = 60
  message_retention_duration = var.message_retention_duration
  retain_acked_messages      = false

  expiration_policy {
    ttl = ""
  }
}

# The consumer pulls and acks its own subscription: roles/pubsub.subscriber on it alone.
resource "google_pubsub_subscription_iam_member" "consumer_subscriber" {
  for_each = local.prediction_consumers

  subscription = google_pubsub_subscription.consumer[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${each.value.service_account}"
}

# Pub/Sub service agent publishes the consumer's undeliverable messages to its dead-letter topic...
resource "google_pubsub_topic_iam_member" "consumer_dead_letter_publisher" {
  for_each = local.prediction_consumers

  topic  = google_pubsub_topic.consumer_dead_letter[each.key].name
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

# ...and acks the forwarded messages on the consumer's subscription.
resource "google_pubsub_subscription_iam_member" "consumer_dead_letter_subscriber" {
  for_each = local.prediction_consumers

  subscription = google_pubsub_subscription.consumer[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}
