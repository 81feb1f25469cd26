# The alert thresholds, read from the pipeline's thresholds file: the one declared place
# (docs/specs/monitoring.md, "Thresholds"). The job reads the same file; nothing here repeats a number.
# Kept apart from monitoring.tf (only locals, no resources) so tests can evaluate it with Terraform alone.
locals {
  alert_thresholds = jsondecode(file("${path.module}/../pipelines/core/alert_thresholds.json"))
  service_health   = local.alert_thresholds.service_health

  # The service_health thresholds Cloud Monitoring judges (the job cannot see its own lag or backlog).
  health_thresholds = {
    system_lag_s         = local.service_health.system_lag_s
    data_freshness_s     = local.service_health.data_freshness_s
    oldest_unacked_age_s = local.service_health.oldest_unacked_age_s
    dead_letter_per_s    = local.service_health.dead_letter_per_s
    latency_p99_ms       = local.service_health.latency_p99_ms
  }

  # A window is one alignment period; an alert needs `consecutive` windows in a row over the threshold.
  health_window_s   = local.service_health.window_s
  health_duration_s = local.service_health.window_s * local.service_health.consecutive
  health_severity   = upper(local.service_health.severity)

  # The in-job alerts (drift, data quality, online quality) share one alert policy on the alerts
  # topic: it takes the highest severity any of their sections declares.
  in_job_severity = contains(
    [for kind in ["drift", "data_quality", "online_quality"] : lower(local.alert_thresholds[kind].severity)],
    "critical",
  ) ? "CRITICAL" : "WARNING"

  # Reference lines on the dashboard: PSI is exported as PSI x 1000 (drift_psi_milli/...).
  drift_psi_milli_threshold = local.alert_thresholds.drift.threshold * 1000
}
