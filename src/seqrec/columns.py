"""Column names used across seqrec: one source for every name."""

# Canonical event table (the reader's and importers' output).
TIMESTAMP = "timestamp"  # int64 microseconds since the data set's day 0
USER = "user_id"  # int64
ITEM = "item_id"  # string, original id space ("nfmcg_123", "214536502", ...)
DOMAIN = "domain"  # marketplace | retail | offers | import
ACTION = "action_type"
SUBDOMAIN = "subdomain"
OS = "os"
SESSION = "session_id"  # int64, added by sessionization (or given by an importer)
DAY = "day"  # int32 day number, derived from TIMESTAMP

CANONICAL_EVENT_COLUMNS = (TIMESTAMP, USER, ITEM, DOMAIN, ACTION, SUBDOMAIN, OS)

# Quarantine and accounting.
REASON = "reason"
SOURCE_FILE = "source_file"

MICROS_PER_SECOND = 1_000_000
MICROS_PER_DAY = 86_400 * MICROS_PER_SECOND
