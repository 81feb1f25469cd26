# Terraform and provider versions: pinned so plans are reproducible.
terraform {
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.20.0, < 7.0.0"
    }
  }
}

# The one provider: every resource lives in var.project_id / var.region.
provider "google" {
  project = var.project_id
  region  = var.region
}

# The project number names the Pub/Sub service agent (dead-letter forwarding).
data "google_project" "this" {
  project_id = var.project_id
}
