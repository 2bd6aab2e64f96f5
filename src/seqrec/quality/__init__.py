"""Data quality: Great Expectations suites run on tables and day partitions, cleaning with row accounting, Data Docs, the report."""
