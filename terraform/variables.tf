variable "project_id" {
  description = "Google Cloud project every resource is created in (Beam's --project)."
  type        = string
}

variable "region" {
  description = "Region of the Dataflow job, bucket, Artifact Registry repository and Firestore database."
  type        = string
  default     = "europe-west1"
}

variable "environment" {
  description = "Environment name, 'dev' or 'prod': selects the Bigtable sizing and labels every resource."
  type        = string
  default     = "dev"

  validation {
    condition     = contains(["dev", "prod"], var.environment)
    error_message = "environment must be 'dev' or 'prod'."
  }
}

variable "labels" {
  description = "Extra labels added to every labelable resource."
  type        = map(string)
  default     = {}
}

variable "kms_key_name" {
  description = "Optional CMEK: full Cloud KMS crypto key name (projects/.../cryptoKeys/...) for Pub/Sub, the bucket, Bigtable and Artifact Registry; null uses Google-managed keys. kms.tf grants each service agent (Pub/Sub, Bigtable, Storage, Artifact Registry, Dataflow, Compute Engine) roles/cloudkms.cryptoKeyEncrypterDecrypter on this key."
  type        = string
  default     = null
}

variable "enable_input_schemas" {
  description = "Attach an Avro schema (JSON encoding) to the transactions and labels topics, so Pub/Sub rejects malformed events at publish time instead of the pipeline dead-lettering them."
  type        = bool
  default     = false
}

variable "message_retention_duration" {
  description = "How long topics and subscriptions keep messages (seconds, e.g. \"604800s\"): the window in which a stopped job can resume without losing events."
  type        = string
  default     = "604800s"
}

variable "ack_deadline_seconds" {
  description = "Ack deadline of the Dataflow subscriptions (10-600 s); Dataflow extends leases itself, 60-600 s avoids redelivery while a bundle is committed."
  type        = number
  default     = 120

  validation {
    condition     = var.ack_deadline_seconds >= 10 && var.ack_deadline_seconds <= 600
    error_message = "ack_deadline_seconds must be between 10 and 600."
  }
}

variable "max_delivery_attempts" {
  description = "Deliveries (5-100) before Pub/Sub forwards a message to the subscription's dead-letter topic."
  type        = number
  default     = 10
}

variable "bigtable_instance_id" {
  description = "Bigtable instance id (RilletOptions --bigtable_instance)."
  type        = string
  default     = "rillet"
}

variable "bigtable_table_id" {
  description = "Feature table id (RilletOptions --bigtable_table)."
  type        = string
  default     = "features"
}

variable "bigtable_zone" {
  description = "Zone of the Bigtable cluster (in var.region, next to the Dataflow workers)."
  type        = string
  default     = "europe-west1-b"
}

variable "bigtable_min_nodes" {
  description = "Production only: least Bigtable nodes the autoscaler keeps."
  type        = number
  default     = 1
}

variable "bigtable_max_nodes" {
  description = "Production only: most Bigtable nodes the autoscaler may add."
  type        = number
  default     = 5
}

variable "bigtable_cpu_target" {
  description = "Production only: CPU utilisation (10-80 %) the Bigtable autoscaler aims for."
  type        = number
  default     = 60
}

variable "bigtable_event_max_age_days" {
  description = "Max age of cells in the tx and label families: the longest feature lookback (37 days) plus a margin."
  type        = number
  default     = 38

  validation {
    condition     = var.bigtable_event_max_age_days > 37
    error_message = "bigtable_event_max_age_days must exceed the longest lookback (37 days)."
  }
}

variable "deletion_protection" {
  description = "Protect the Bigtable instance/table and the Firestore database from terraform destroy."
  type        = bool
  default     = true
}

variable "firestore_location" {
  description = "Location of the Firestore (Datastore mode) database; a region or multi-region such as eur3."
  type        = string
  default     = "europe-west1"
}

variable "bucket_name" {
  description = "Name of the GCS bucket for Dataflow staging/temp, Flex Templates and model versions; null derives <project_id>-rillet."
  type        = string
  default     = null
}

variable "temp_object_age_days" {
  description = "Days after which objects under temp/ and staging/ are deleted."
  type        = number
  default     = 7
}

variable "noncurrent_version_age_days" {
  description = "Days a non-current (overwritten or deleted) object version is kept."
  type        = number
  default     = 30
}

variable "artifact_repository_id" {
  description = "Artifact Registry Docker repository holding the Flex Template (launcher + SDK) image."
  type        = string
  default     = "rillet"
}

variable "dataflow_service_account_id" {
  description = "Account id (before @) of the Dataflow worker service account."
  type        = string
  default     = "rillet-dataflow"
}

variable "enable_apis" {
  description = "Enable the Google APIs rillet uses (never disabled on destroy). Set false where a platform team manages APIs."
  type        = bool
  default     = true
}

variable "deployer_members" {
  description = "IAM members allowed to launch and update the job (e.g. serviceAccount:ci@PROJECT.iam.gserviceaccount.com): actAs on the worker account, dataflow.developer, image push and bucket objects."
  type        = list(string)
  default     = []
}

variable "retrain_image" {
  description = "Container image of the weekly retraining job (the dataflow/Dockerfile image `rillet deploy` pushes); null uses <region>-docker.pkg.dev/<project>/<artifact_repository_id>/rillet:latest. Pin the deployed tag in production."
  type        = string
  default     = null
}

variable "retrain_schedule" {
  description = "Cron schedule (Cloud Scheduler syntax) of `rillet retrain`: weekly, after the week's labels have arrived."
  type        = string
  default     = "0 3 * * 1"
}

variable "retrain_time_zone" {
  description = "Time zone of retrain_schedule (tz database name)."
  type        = string
  default     = "Etc/UTC"
}

variable "retrain_paused" {
  description = "Create the weekly trigger paused (e.g. until the history and a first champion exist)."
  type        = bool
  default     = false
}

variable "retrain_history_bucket" {
  description = "Bucket holding the event history (transactions*/labels* files) retraining reads; null uses the rillet bucket."
  type        = string
  default     = null
}

variable "retrain_history_prefix" {
  description = "Object prefix of the event history in retrain_history_bucket (with a trailing slash); the job may read nothing else."
  type        = string
  default     = "history/"
}

variable "retrain_model_prefix" {
  description = "Object prefix of the model versions and registry in the rillet bucket (with a trailing slash); the job may write nothing else."
  type        = string
  default     = "models/"
}

variable "retrain_service_account_id" {
  description = "Account id (before @) of the retraining job's service account; its Cloud Scheduler trigger is <id>-trigger."
  type        = string
  default     = "rillet-retrain"
}

variable "retrain_cpu" {
  description = "vCPUs of the retraining job's container (Cloud Run: 1, 2, 4 or 8)."
  type        = string
  default     = "4"
}

variable "retrain_memory" {
  description = "Memory of the retraining job's container (the handbook's feature table and training fit in 8Gi)."
  type        = string
  default     = "8Gi"
}

variable "retrain_timeout" {
  description = "Longest run of one retraining (backfill, selection, two fits, evaluation), e.g. \"3600s\"."
  type        = string
  default     = "3600s"
}

variable "dataflow_job_name" {
  description = "Name of the streaming Dataflow job (`rillet deploy --job-name`, default rillet): the dashboard and alert policies select the job's metrics by it."
  type        = string
  default     = "rillet"
}

variable "notification_channels" {
  description = "Existing Cloud Monitoring notification channel ids (projects/<project>/notificationChannels/<id>) every rillet alert policy notifies; [] creates incidents without notifying anyone."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.notification_channels : can(regex("^projects/[^/]+/notificationChannels/[^/]+$", c))])
    error_message = "notification_channels must be channel ids: projects/<project>/notificationChannels/<id>."
  }
}

variable "alert_emails" {
  description = "Email addresses to notify: one email notification channel each (monitoring.tf), added to notification_channels."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for e in var.alert_emails : can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", e))])
    error_message = "alert_emails must be email addresses."
  }
}

variable "prediction_consumers" {
  description = "Downstream consumers of the predictions topic. Each gets its own subscription <name>-predictions (with the optional Pub/Sub filter, e.g. attributes.risk_band = \"high\"), its own dead-letter topic <name>-predictions-undeliverable, and roles/pubsub.subscriber on that subscription only, for service_account (an email)."
  type = list(object({
    name            = string
    service_account = string
    filter          = optional(string)
  }))
  default = []

  validation {
    condition     = length(distinct([for c in var.prediction_consumers : c.name])) == length(var.prediction_consumers)
    error_message = "prediction_consumers names must be unique."
  }

  validation {
    condition     = alltrue([for c in var.prediction_consumers : can(regex("^[a-z]([a-z0-9-]{0,48}[a-z0-9])?$", c.name))])
    error_message = "prediction_consumers names must be lowercase letters, digits and dashes (at most 50), starting with a letter and not ending with a dash."
  }

  validation {
    condition     = alltrue([for c in var.prediction_consumers : can(regex("^[a-z0-9][a-z0-9._-]*@[a-z0-9-]+(\\.[a-z0-9-]+)+$", c.service_account))])
    error_message = "prediction_consumers service_account must be a service account email (name@project.iam.gserviceaccount.com), without the serviceAccount: prefix."
  }

  validation {
    condition     = alltrue([for c in var.prediction_consumers : c.filter == null || try(length(c.filter) > 0 && length(c.filter) <= 256, false)])
    error_message = "prediction_consumers filter must be a non-empty Pub/Sub filter of at most 256 characters (or omitted)."
  }
}
