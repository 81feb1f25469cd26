# Cloud Monitoring of the streaming job (issue 15): one dashboard, the service-health alert policies
# (thresholds from the pipeline's thresholds file, thresholds.tf) and one policy on the alerts topic,
# where the job's Monitor stage publishes drift, data-quality and online-quality alerts
# (docs/specs/monitoring.md). Metric types: the Google Cloud metrics list (dataflow.googleapis.com,
# pubsub.googleapis.com, compute.googleapis.com); the job's Beam metrics are Dataflow user metrics
# (dataflow.googleapis.com/job/user_counter, label metric_name).

locals {
  # The job's metrics: by job name, which `rillet deploy` keeps across updates (the job id changes).
  job_filter    = "resource.type = \"dataflow_job\" AND resource.label.job_name = \"${var.dataflow_job_name}\""
  worker_filter = "resource.type = \"dataflow_worker\" AND resource.label.job_name = \"${var.dataflow_job_name}\""
  user_metric   = "metric.type = \"dataflow.googleapis.com/job/user_counter\" AND ${local.job_filter}"

  # The job's input subscriptions (transactions-rillet, labels-rillet).
  input_subscriptions = [for name, s in local.subscriptions : name if s.dataflow]
  input_filter        = "resource.type = \"pubsub_subscription\" AND resource.label.subscription_id = monitoring.regex.full_match(\"${join("|", local.input_subscriptions)}\")"
  topic_filter        = { for key, name in local.topics : key => "resource.type = \"pubsub_topic\" AND resource.label.topic_id = \"${name}\"" }
  publish_count       = "metric.type = \"pubsub.googleapis.com/topic/send_message_operation_count\""

  notification_channels = concat(var.notification_channels, [for c in google_monitoring_notification_channel.email : c.id])

  runbook_header = "Job `${var.dataflow_job_name}` in project `${var.project_id}` (${var.environment}). Contract: docs/specs/monitoring.md; dashboard: rillet (${var.environment})."

  # Service-health policies Cloud Monitoring evaluates: threshold key in thresholds.tf -> condition.
  health_policies = {
    system_lag = {
      title     = "Dataflow system lag"
      threshold = "system_lag_s"
      filter    = "metric.type = \"dataflow.googleapis.com/job/system_lag\" AND ${local.job_filter}"
      aligner   = "ALIGN_MAX"
      reducer   = "REDUCE_MAX"
      runbook   = <<-EOT
        Items have waited longer than `service_health.system_lag_s` seconds in a stage.
        1. Dataflow console, job graph: which stage is the bottleneck (`job/is_bottleneck`)?
        2. Workers at `max_num_workers`? Raise it with `rillet deploy --update`.
        3. Bigtable CPU high (feature reads/writes)? The autoscaler's `bigtable_max_nodes`.
        4. Errors in the worker logs (model load, Datastore quota).
      EOT
    }
    data_freshness = {
      title     = "Dataflow data freshness"
      threshold = "data_freshness_s"
      filter    = "metric.type = \"dataflow.googleapis.com/job/data_watermark_age\" AND ${local.job_filter}"
      aligner   = "ALIGN_MAX"
      reducer   = "REDUCE_MAX"
      runbook   = <<-EOT
        The watermark is more than `service_health.data_freshness_s` seconds behind event time:
        predictions and windows (drift, data quality) close late.
        1. Input backlog on the dashboard: producers faster than the job (scale) or the job stuck?
        2. Events with old timestamps (a replay or backfill published to the live topics)?
        3. A stage stuck on one key (hot customer/terminal): per-stage data watermark in the console.
      EOT
    }
    oldest_unacked = {
      title     = "Input subscription backlog age"
      threshold = "oldest_unacked_age_s"
      filter    = "metric.type = \"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" AND ${local.input_filter}"
      aligner   = "ALIGN_MAX"
      reducer   = "REDUCE_MAX"
      runbook   = <<-EOT
        A message on `${join("` or `", local.input_subscriptions)}` has been unacknowledged for more
        than `service_health.oldest_unacked_age_s` seconds.
        1. Is the job running (`rillet deploy` status, Dataflow console)? A stopped job keeps its backlog.
        2. Is it acking but slow (system lag alert too) or not reading at all (worker errors)?
        3. Retention is `message_retention_duration`: act before the oldest message expires.
      EOT
    }
    dead_letter = {
      title     = "Dead-letter publish rate"
      threshold = "dead_letter_per_s"
      filter    = "${local.publish_count} AND ${local.topic_filter["dead-letter"]}"
      aligner   = "ALIGN_RATE"
      reducer   = "REDUCE_SUM"
      runbook   = <<-EOT
        The job rejects more than `service_health.dead_letter_per_s` events per second to `dead-letter`.
        1. Read some: `gcloud pubsub subscriptions pull dead-letter-monitor --limit 10`; the
           attributes carry the reason (README "Prediction messages ..., dead letters").
        2. One producer sending a new schema or bad timestamps? Fix the producer, then replay.
        3. The data_quality alerts (alerts topic) give the rate per reason.
      EOT
    }
  }
}

# Optional email notification channels (var.alert_emails), added to var.notification_channels.
resource "google_monitoring_notification_channel" "email" {
  for_each = toset(var.alert_emails)

  display_name = "rillet ${var.environment}: ${each.value}"
  type         = "email"
  labels = {
    email_address = each.value
  }
  user_labels = local.common_labels

  depends_on = [google_project_service.required]
}

# Service health: Cloud Monitoring judges what the job cannot see of itself (its lag, its backlog,
# its reject rate), with the thresholds, window and streak length of the thresholds file.
resource "google_monitoring_alert_policy" "service_health" {
  for_each = local.health_policies

  display_name          = "rillet ${var.environment}: ${each.value.title}"
  combiner              = "OR"
  severity              = local.health_severity
  notification_channels = local.notification_channels
  user_labels           = local.common_labels

  conditions {
    display_name = "${each.value.title} >= ${local.health_thresholds[each.value.threshold]} for ${local.health_duration_s}s"

    condition_threshold {
      filter          = each.value.filter
      comparison      = "COMPARISON_GE"
      threshold_value = local.health_thresholds[each.value.threshold]
      duration        = "${local.health_duration_s}s"

      aggregations {
        alignment_period     = "${local.health_window_s}s"
        per_series_aligner   = each.value.aligner
        cross_series_reducer = each.value.reducer
      }

      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = "1800s"
  }

  documentation {
    mime_type = "text/markdown"
    subject   = "rillet ${var.environment}: ${each.value.title} over its threshold"
    content   = "${local.runbook_header}\n\nThreshold: `service_health.${each.value.threshold}` in pipelines/core/alert_thresholds.json, held for `window_s` x `consecutive` seconds.\n\n${each.value.runbook}"
  }

  lifecycle {
    precondition {
      condition     = local.health_window_s % 60 == 0 && local.health_window_s > 0
      error_message = "service_health.window_s in pipelines/core/alert_thresholds.json must be a positive multiple of 60: Cloud Monitoring durations are whole minutes."
    }
  }

  depends_on = [google_project_service.required]
}

# The in-job alerts: any message on the alerts topic (drift, data quality, online quality, and the
# job's own service_health latency check) opens an incident. The message itself says what crossed
# which threshold; this policy only says that one did.
resource "google_monitoring_alert_policy" "pipeline_alerts" {
  display_name          = "rillet ${var.environment}: alert raised by the job"
  combiner              = "OR"
  severity              = local.in_job_severity
  notification_channels = local.notification_channels
  user_labels           = local.common_labels

  conditions {
    display_name = "Message published on ${local.topics["alerts"]}"

    condition_threshold {
      filter          = "${local.publish_count} AND ${local.topic_filter["alerts"]}"
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"

      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }

      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = "3600s"
  }

  documentation {
    mime_type = "text/markdown"
    subject   = "rillet ${var.environment}: the job raised an alert"
    content   = <<-EOT
      ${local.runbook_header}

      The job published on `${local.topics["alerts"]}`. Read the alerts:
      `gcloud pubsub subscriptions pull ${local.topics["alerts"]}-monitor --limit 20` (one JSON alert
      per message; attributes `kind`, `metric`, `severity`, `model_version`, `feature`).

      Fields (docs/specs/monitoring.md, "Alerts"): `kind`, `metric`, `value` against `threshold`
      (`comparison`), the window judged (`window_start`..`window_end`, `window_basis`),
      `consecutive`, `severity`, `model_version`, `feature`, `message`. Dedupe on `alert_id`.

      - `drift`: PSI of `feature` for `model_version` over the threshold `consecutive` windows in a
        row. Compare with the model card; if the data changed for good, retrain
        (`gcloud run jobs execute rillet-retrain`).
      - `data_quality`: a rate (dead letters, unknown labels, duplicates, late events) over its
        threshold; read `dead-letter-monitor` for the reasons, then the producer.
      - `online_quality`: the champion's online AP/CP@100 for a day under the fraction of its
        validation figure; consider `rillet models rollback` or promoting the challenger.
      - `service_health`: `latency_p99_ms` over its threshold (the job's own check).

      Thresholds: pipelines/core/alert_thresholds.json (the job and these policies read it).
    EOT
  }

  depends_on = [google_project_service.required]
}

# The job's dashboard: Dataflow lag and freshness, input backlog, dead-letter and alert rates, the
# job's own counters and gauges (namespaces rillet, rillet_monitor, rillet_online_eval: Dataflow
# labels them by metric_name only), and the workers' CPU and memory.
locals {
  # One chart: title, y-axis label, data sets and optional threshold lines.
  dashboard_charts = [
    {
      title = "System lag (s)"
      label = "seconds"
      sets = [
        { name = "system lag", filter = "metric.type = \"dataflow.googleapis.com/job/system_lag\" AND ${local.job_filter}", aligner = "ALIGN_MAX", reducer = "REDUCE_MAX", group_by = [] },
      ]
      thresholds = [{ value = local.health_thresholds.system_lag_s, label = "service_health.system_lag_s" }]
    },
    {
      title = "Data freshness: watermark age (s)"
      label = "seconds"
      sets = [
        { name = "watermark age", filter = "metric.type = \"dataflow.googleapis.com/job/data_watermark_age\" AND ${local.job_filter}", aligner = "ALIGN_MAX", reducer = "REDUCE_MAX", group_by = [] },
      ]
      thresholds = [{ value = local.health_thresholds.data_freshness_s, label = "service_health.data_freshness_s" }]
    },
    {
      title = "Input backlog: undelivered messages"
      label = "messages"
      sets = [
        { name = "$${resource.labels.subscription_id}", filter = "metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND ${local.input_filter}", aligner = "ALIGN_MAX", reducer = "REDUCE_MAX", group_by = ["resource.label.subscription_id"] },
      ]
      thresholds = []
    },
    {
      title = "Input backlog: oldest unacked message age (s)"
      label = "seconds"
      sets = [
        { name = "$${resource.labels.subscription_id}", filter = "metric.type = \"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" AND ${local.input_filter}", aligner = "ALIGN_MAX", reducer = "REDUCE_MAX", group_by = ["resource.label.subscription_id"] },
      ]
      thresholds = [{ value = local.health_thresholds.oldest_unacked_age_s, label = "service_health.oldest_unacked_age_s" }]
    },
    {
      title = "Dead letters published (msg/s)"
      label = "messages/s"
      sets = [
        { name = "dead-letter (job rejects)", filter = "${local.publish_count} AND ${local.topic_filter["dead-letter"]}", aligner = "ALIGN_RATE", reducer = "REDUCE_SUM", group_by = [] },
        { name = "$${resource.labels.topic_id}", filter = "${local.publish_count} AND resource.type = \"pubsub_topic\" AND resource.label.topic_id = monitoring.regex.full_match(\".*-undeliverable\")", aligner = "ALIGN_RATE", reducer = "REDUCE_SUM", group_by = ["resource.label.topic_id"] },
      ]
      thresholds = [{ value = local.health_thresholds.dead_letter_per_s, label = "service_health.dead_letter_per_s" }]
    },
    {
      title = "Alerts published by the job (per minute)"
      label = "alerts"
      sets = [
        { name = "alerts topic", filter = "${local.publish_count} AND ${local.topic_filter["alerts"]}", aligner = "ALIGN_SUM", reducer = "REDUCE_SUM", group_by = [] },
      ]
      thresholds = []
    },
    {
      title = "Job counters (running totals)"
      label = "count"
      sets = [
        { name = "$${metric.labels.metric_name}", filter = "${local.user_metric} AND metric.label.metric_name = monitoring.regex.full_match(\"transactions_valid|transactions_dead_lettered|labels_valid|labels_dead_lettered|predictions_written|feature_corrections|corrections_beyond_horizon|store_rejected|alerts_raised(/.*)?\")", aligner = "ALIGN_MAX", reducer = "REDUCE_SUM", group_by = ["metric.label.metric_name"] },
      ]
      thresholds = []
    },
    {
      title = "Event-to-prediction latency (ms, Monitor gauges)"
      label = "ms"
      sets = [
        { name = "$${metric.labels.metric_name}", filter = "${local.user_metric} AND metric.label.metric_name = monitoring.regex.full_match(\"latency_p50_ms|latency_p99_ms|latency_max_ms\")", aligner = "ALIGN_MAX", reducer = "REDUCE_MAX", group_by = ["metric.label.metric_name"] },
      ]
      thresholds = [{ value = local.health_thresholds.latency_p99_ms, label = "service_health.latency_p99_ms" }]
    },
    {
      title = "Throughput (per s, Monitor gauges)"
      label = "per second"
      sets = [
        { name = "$${metric.labels.metric_name}", filter = "${local.user_metric} AND metric.label.metric_name = monitoring.regex.full_match(\"events_per_s|predictions_per_s\")", aligner = "ALIGN_MAX", reducer = "REDUCE_SUM", group_by = ["metric.label.metric_name"] },
      ]
      thresholds = []
    },
    {
      title = "Data-quality rates (ppm)"
      label = "ppm"
      sets = [
        { name = "$${metric.labels.metric_name}", filter = "${local.user_metric} AND metric.label.metric_name = monitoring.regex.full_match(\"quality_rate_ppm/.*\")", aligner = "ALIGN_MAX", reducer = "REDUCE_MAX", group_by = ["metric.label.metric_name"] },
      ]
      thresholds = []
    },
    {
      title = "Drift: PSI x 1000 per role (champion, challenger) and feature"
      label = "PSI x 1000"
      sets = [
        { name = "$${metric.labels.metric_name}", filter = "${local.user_metric} AND metric.label.metric_name = monitoring.regex.full_match(\"drift_psi_milli/.*\")", aligner = "ALIGN_MAX", reducer = "REDUCE_MAX", group_by = ["metric.label.metric_name"] },
      ]
      thresholds = [{ value = local.drift_psi_milli_threshold, label = "drift.threshold x 1000" }]
    },
    {
      title = "Online quality (ppm, per role: its latest complete day)"
      label = "ppm"
      sets = [
        { name = "$${metric.labels.metric_name}", filter = "${local.user_metric} AND metric.label.metric_name = monitoring.regex.full_match(\"(auc|ap|cp100)_ppm/.*\")", aligner = "ALIGN_MAX", reducer = "REDUCE_MAX", group_by = ["metric.label.metric_name"] },
      ]
      thresholds = []
    },
    {
      title = "Worker CPU utilization"
      label = "fraction"
      sets = [
        { name = "mean", filter = "metric.type = \"compute.googleapis.com/instance/cpu/utilization\" AND resource.type = \"gce_instance\" AND metadata.user_labels.\"dataflow_job_name\" = \"${var.dataflow_job_name}\"", aligner = "ALIGN_MEAN", reducer = "REDUCE_MEAN", group_by = [] },
        { name = "max", filter = "metric.type = \"compute.googleapis.com/instance/cpu/utilization\" AND resource.type = \"gce_instance\" AND metadata.user_labels.\"dataflow_job_name\" = \"${var.dataflow_job_name}\"", aligner = "ALIGN_MEAN", reducer = "REDUCE_MAX", group_by = [] },
      ]
      thresholds = []
    },
    {
      title = "Worker memory used (bytes, largest worker per container)"
      label = "bytes"
      sets = [
        { name = "$${metric.labels.container}", filter = "metric.type = \"dataflow.googleapis.com/worker/memory/bytes_used\" AND ${local.worker_filter}", aligner = "ALIGN_MAX", reducer = "REDUCE_MAX", group_by = ["metric.label.container"] },
        { name = "allocated to the job", filter = "metric.type = \"dataflow.googleapis.com/job/memory_capacity\" AND ${local.job_filter}", aligner = "ALIGN_MAX", reducer = "REDUCE_SUM", group_by = [] },
      ]
      thresholds = []
    },
  ]

  dashboard_widgets = [
    for chart in local.dashboard_charts : {
      title = chart.title
      xyChart = {
        dataSets = [
          for set in chart.sets : {
            plotType       = "LINE"
            legendTemplate = set.name
            timeSeriesQuery = {
              timeSeriesFilter = {
                filter = set.filter
                aggregation = {
                  alignmentPeriod    = "60s"
                  perSeriesAligner   = set.aligner
                  crossSeriesReducer = set.reducer
                  groupByFields      = set.group_by
                }
              }
            }
          }
        ]
        thresholds = [for t in chart.thresholds : { value = t.value, label = t.label }]
        yAxis      = { label = chart.label, scale = "LINEAR" }
      }
    }
  ]

  # Two charts a row on the 48-column mosaic grid.
  dashboard = {
    displayName = "rillet (${var.environment})"
    mosaicLayout = {
      columns = 48
      tiles = [
        for i, widget in local.dashboard_widgets : {
          xPos   = (i % 2) * 24
          yPos   = floor(i / 2) * 16
          width  = 24
          height = 16
          widget = widget
        }
      ]
    }
  }
}

resource "google_monitoring_dashboard" "rillet" {
  dashboard_json = jsonencode(local.dashboard)

  depends_on = [google_project_service.required]
}
