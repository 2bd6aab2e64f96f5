"""Reading T-ECD warehouses: schema-safe partition reads, canonical Arrow schemas, ingest into day files, importers."""
