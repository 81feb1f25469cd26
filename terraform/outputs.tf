output "dataflow_service_account_email" {
  description = "Service account to pass as --service_account_email to the Dataflow job."
  value       = google_service_account.dataflow.email
}

output "bucket_name" {
  description = "GCS bucket for --staging_location/--temp_location (gs://<bucket>/staging, /temp), templates and models."
  value       = google_storage_bucket.rillet.name
}

output "artifact_registry_repository" {
  description = "Docker repository path for the Flex Template image (<region>-docker.pkg.dev/<project>/<repo>)."
  value       = "${google_artifact_registry_repository.rillet.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.rillet.repository_id}"
}

output "artifact_registry_repository_id" {
  description = "Repository id alone: the --repository of `rillet deploy`."
  value       = google_artifact_registry_repository.rillet.repository_id
}

output "topics" {
  description = "Pipeline topic names by role (transactions, labels, predictions, dead-letter)."
  value       = { for k, t in google_pubsub_topic.main : k => t.name }
}

output "dead_letter_topics" {
  description = "Pub/Sub dead-letter (undeliverable) topic of each pipeline topic's subscriptions."
  value       = { for k, t in google_pubsub_topic.dead_letter : k => t.name }
}

output "subscriptions" {
  description = "Subscription names: the job's inputs (*-rillet) and the monitors (*-monitor)."
  value       = [for s in google_pubsub_subscription.main : s.name]
}

output "bigtable_instance" {
  description = "Bigtable instance id (--bigtable_instance)."
  value       = google_bigtable_instance.rillet.name
}

output "bigtable_table" {
  description = "Feature table id (--bigtable_table)."
  value       = google_bigtable_table.features.name
}

output "firestore_database" {
  description = "Firestore (Datastore mode) database name."
  value       = google_firestore_database.datastore.name
}

output "retrain_job" {
  description = "Cloud Run job running `rillet retrain` weekly (run it now: gcloud run jobs execute <name> --region <region>)."
  value       = google_cloud_run_v2_job.retrain.name
}

output "retrain_service_account_email" {
  description = "Service account of the retraining job (history read, model prefix write, Datastore read)."
  value       = google_service_account.retrain.email
}

output "retrain_command" {
  description = "The command line the retraining job runs."
  value       = local.retrain_script
}

output "alerts_topic" {
  description = "Topic of the job's monitoring alerts (--alerts_topic); operators read it through the alerts-monitor subscription."
  value       = google_pubsub_topic.main["alerts"].name
}

output "prediction_consumer_subscriptions" {
  description = "Subscription of each downstream consumer on the predictions topic (consumer name -> subscription name)."
  value       = { for k, s in google_pubsub_subscription.consumer : k => s.name }
}

output "prediction_consumer_dead_letter_topics" {
  description = "Dead-letter topic of each consumer's subscription (consumer name -> topic name)."
  value       = { for k, t in google_pubsub_topic.consumer_dead_letter : k => t.name }
}

output "monitoring_dashboard" {
  description = "Cloud Monitoring dashboard of the job (its resource id: projects/<number>/dashboards/<id>)."
  value       = google_monitoring_dashboard.rillet.id
}

output "alert_policies" {
  description = "Cloud Monitoring alert policies (service health by key, and pipeline_alerts for the alerts topic) -> policy name."
  value       = merge({ for k, p in google_monitoring_alert_policy.service_health : k => p.name }, { pipeline_alerts = google_monitoring_alert_policy.pipeline_alerts.name })
}
