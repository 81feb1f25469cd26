"""The batch backfill: event history (Parquet/CSV/JSONL) to the feature table and warm Bigtable
state, with the streaming job's own feature engine."""
