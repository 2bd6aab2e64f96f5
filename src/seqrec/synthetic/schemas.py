"""Arrow schemas of every T-ECD table, shared by the generator, the reader and the quality suites.

Marketplace events are exactly the real files' schema (``data/tecd_marketplace``: written by
Polars, every field nullable, no schema metadata). The other tables follow TECD.md's
descriptions; ids are uint64 like ``user_id`` in the real events, codes are int64.
"""

from __future__ import annotations

import pyarrow as pa

from seqrec import columns as C

STRING = pa.large_string()
EMBEDDING = pa.list_(pa.float32())

EVENTS_SCHEMA = pa.schema(
    [
        (C.TIMESTAMP, pa.duration("us")),
        (C.USER, pa.uint64()),
        (C.ITEM, STRING),
        (C.SUBDOMAIN, STRING),
        (C.ACTION, STRING),
        (C.OS, STRING),
    ]
)

TECD_SCHEMAS: dict[str, pa.Schema] = {
    "events": EVENTS_SCHEMA,
    "users": pa.schema([(C.USER, pa.uint64()), ("socdem_cluster", pa.int64()), ("region", pa.int64())]),
    "brands": pa.schema([("brand_id", pa.uint64()), ("embedding", EMBEDDING)]),
    "items": pa.schema(
        [
            (C.ITEM, STRING),
            ("brand_id", pa.uint64()),
            ("category", STRING),
            ("subcategory", STRING),
            ("price", pa.float64()),
            ("embedding", EMBEDDING),
        ]
    ),
    "payments": pa.schema(
        [
            (C.TIMESTAMP, pa.duration("us")),
            (C.USER, pa.uint64()),
            ("brand_id", pa.uint64()),
            ("price", pa.float64()),
            ("transaction_hash", STRING),
        ]
    ),
    "receipts": pa.schema(
        [
            (C.TIMESTAMP, pa.duration("us")),
            (C.USER, pa.uint64()),
            ("brand_id", pa.uint64()),
            ("approximate_item_id", STRING),
            ("count", pa.int64()),
            ("price", pa.float64()),
            ("transaction_hash", STRING),
        ]
    ),
    "reviews": pa.schema(
        [
            (C.TIMESTAMP, pa.duration("us")),
            (C.USER, pa.uint64()),
            ("brand_id", pa.uint64()),
            ("rating", pa.int64()),
            ("embedding", EMBEDDING),
        ]
    ),
    # Ground truth outside the T-ECD layout: two rows per item (its two latent intents).
    "item_groups": pa.schema([(C.ITEM, STRING), (C.DOMAIN, STRING), ("group", pa.int64())]),
}


def tecd_schema(table: str) -> pa.Schema:
    """Return the Arrow schema of a T-ECD table (``events`` covers every domain's events)."""
    if table not in TECD_SCHEMAS:
        raise KeyError(f"unknown T-ECD table '{table}' (known: {sorted(TECD_SCHEMAS)})")
    return TECD_SCHEMAS[table]
