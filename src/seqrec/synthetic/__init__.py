"""The synthetic T-ECD generator: a warehouse of day-partitioned parquet files with the documented defects."""
