"""Settings of the data side: the generator, loading, quality checks and cleaning."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from seqrec.config.base import Section


# --------------------------------------------------------------------------- generator
class DefectRates(Section):
    """Defect rates injected by the generator; defaults are TECD.md's documented rates."""

    retail_items_missing_category: float = Field(0.0383, ge=0, le=1)
    marketplace_items_missing_category: float = Field(0.4156, ge=0, le=1)
    marketplace_items_missing_subcategory: float = Field(0.5302, ge=0, le=1)
    retail_items_missing_price: float = Field(0.1059, ge=0, le=1)
    marketplace_items_missing_price: float = Field(0.0012, ge=0, le=1)
    payments_missing_price: float = Field(0.000002, ge=0, le=1)
    receipts_missing_price: float = Field(0.0142, ge=0, le=1)
    payments_missing_brand: float = Field(0.4836, ge=0, le=1)
    receipts_missing_brand: float = Field(0.8580, ge=0, le=1)
    brands_duplicated: float = Field(0.0019, ge=0, le=1)
    marketplace_events_missing_subdomain: float = Field(0.0004, ge=0, le=1)
    users_missing_socdem: float = Field(0.0015, ge=0, le=1)
    users_missing_region: float = Field(0.0168, ge=0, le=1)
    # Share of receipt lines whose approximate_item_id matches a catalogue item.
    receipt_linkage: float = Field(0.06, ge=0, le=1)
    # Variable-length / empty embedding arrays in brands and reviews.
    ragged_embeddings: bool = True
    # Not in TECD.md's table, but described there: "most [brand] embeddings missing"; item
    # brand_id is nullable.
    brands_missing_embedding: float = Field(0.70, ge=0, le=1)
    items_missing_brand: float = Field(0.05, ge=0, le=1)

    @classmethod
    def none(cls) -> "DefectRates":
        """Return rates with every defect switched off (linkage stays a property, 1.0)."""
        zero = {k: 0.0 for k, v in cls.model_fields.items() if v.annotation is float}
        return cls(**{**zero, "receipt_linkage": 1.0, "ragged_embeddings": False})


class GeneratorConfig(Section):
    """Synthetic T-ECD: one scale knob (``events``) from thousands to 100M+."""

    seed: int = 0
    events: int = Field(200_000, gt=0)  # total marketplace events over all days
    first_day: int = Field(1082, ge=0)
    days: int = Field(14, gt=0)
    domains: tuple[Literal["marketplace", "retail", "offers"], ...] = ("marketplace", "retail", "offers")
    events_per_user: float = Field(12.0, gt=0)  # mean events per active user over the whole range (approx.)
    events_per_item: float = Field(25.0, gt=0)  # sets catalogue size from the scale
    intents: int = Field(50, gt=0)  # latent item groups the sessions are drawn from
    zipf_exponent: float = Field(1.05, gt=0)
    item_embedding_dim: int = Field(300, gt=0)
    brand_embedding_dim: int = Field(300, gt=0)
    review_embedding_dim: int = Field(312, gt=0)
    workers: int = Field(2, gt=0)  # processes writing day partitions in parallel
    # Other tables, sized relative to marketplace events (per day).
    retail_events_ratio: float = Field(0.3, ge=0)
    offers_events_ratio: float = Field(0.05, ge=0)
    payments_ratio: float = Field(0.02, ge=0)  # payment events per marketplace event
    receipts_share: float = Field(0.6, ge=0, le=1)  # payments that come with a receipt basket
    basket_mean: float = Field(4.0, ge=1)  # receipt lines per basket (a few exceed 50: noise)
    reviews_ratio: float = Field(0.005, ge=0)
    items_per_brand: float = Field(10.0, gt=0)
    # Sessions: a session has one latent intent; each step draws from the intent (popularity
    # inside it), moves to the intent's successor of the previous item, repeats it, or
    # revisits a random earlier item of the session (the rest of the steps are draws).
    session_length_mean: float = Field(4.0, ge=1)
    p_successor: float = Field(0.30, ge=0, le=1)
    p_repeat: float = Field(0.10, ge=0, le=1)
    p_revisit: float = Field(0.15, ge=0, le=1)
    p_user_intent: float = Field(0.5, ge=0, le=1)  # session takes its user's favourite intent
    gap_median_seconds: float = Field(120.0, gt=0)  # inside sessions (real ~195 s); kept below 30 minutes
    like_share: float = Field(0.0004, ge=0, lt=1)  # marketplace likes (subdomain null on them)
    defects: DefectRates = DefectRates()

    @model_validator(mode="after")
    def _step_mix(self) -> "GeneratorConfig":
        steps = self.p_successor + self.p_repeat + self.p_revisit
        if steps > 1:
            raise ValueError(f"generator.p_successor + p_repeat + p_revisit = {steps} exceeds 1")
        return self


# --------------------------------------------------------------------------- data
class DataConfig(Section):
    """Where the raw data is and how it is loaded."""

    root: Path | None = None  # None: generate into <output.root>/data
    domains: tuple[Literal["marketplace", "retail", "offers"], ...] = ("marketplace",)
    first_day: int | None = None
    last_day: int | None = None
    window_days: int | None = Field(None, gt=0)  # flows: only the last N days that have files (None: every day)
    on_bad_partition: Literal["fail", "skip"] = "fail"  # skip = quarantine and report
    embeddings: Literal["exclude", "repair"] = "exclude"
    embedding_dim: int | None = Field(None, gt=0)  # repair: pad/truncate to this; None = modal length
    read_retries: int = Field(3, ge=0)  # retries of a transient OSError per partition, then it is bad
    # flows: the per-day tasks (ingest, validation, cleaning) and the sessions' and graph's buckets run on the workers
    # of the scheduler at dask_address (e.g. "tcp://127.0.0.1:8786"), or on a local cluster of dask_workers processes
    # when dask_processes, else in the flow's process; outside the flows, `seqrec load` reads its partitions and
    # `seqrec features` its buckets there
    dask_address: str | None = None
    dask_workers: int = Field(2, gt=0)  # local: processes of the local cluster; days read at a time by `seqrec load`
    dask_processes: bool = False

    @model_validator(mode="after")
    def _day_range(self) -> "DataConfig":
        if self.first_day is not None and self.last_day is not None and self.first_day > self.last_day:
            raise ValueError(f"data.first_day={self.first_day} is after data.last_day={self.last_day}")
        return self


# --------------------------------------------------------------------------- quality
class QualityConfig(Section):
    """Great Expectations thresholds and value sets; thresholds reach the suites as run-time parameters.

    ``mostly`` maps a check (``"<table>.<check>"``, e.g. ``"users.region"``,
    ``"items.retail.price"``, ``"brands.key_unique"``) to the share of rows that must pass in
    the raw pass; unlisted checks use ``default_mostly`` (1.0: any defect is a finding with its
    observed rate). ``cleaned_mostly`` does the same for the cleaned pass (the gate). A
    production deployment overrides these maps; the suites stay the same.
    """

    # Also build Great Expectations Data Docs (assets served locally: `make datadocs-assets`).
    build_data_docs: bool = True

    on_cleaned_failure: Literal["fail", "warn"] = "fail"
    default_mostly: float = Field(1.0, ge=0, le=1)
    mostly: dict[str, float] = {}
    cleaned_mostly: dict[str, float] = {}
    price_range: tuple[float, float] = (-50.0, 50.0)
    rating_range: tuple[int, int] = (1, 5)
    code_ranges: dict[str, tuple[int, int]] = {"socdem_cluster": (0, 21), "region": (0, 90)}
    embedding_dims: dict[str, int] = {"brands": 300, "items": 300, "reviews": 312}
    min_receipt_linkage: float = Field(0.5, ge=0, le=1)  # share of receipt lines found in a catalogue
    min_rows: int = Field(1, ge=0)
    action_types: dict[str, tuple[str, ...]] = {
        "marketplace": ("view", "click", "clickout", "like"),
        "retail": ("view", "click", "added_to_cart", "added-to-cart", "order"),
        "offers": ("view", "click", "clickout", "like"),
    }
    subdomains: dict[str, tuple[str, ...]] = {
        "marketplace": ("u2i", "i2i", "catalog", "search", "other"),
        "retail": ("catalog", "search", "other", "main", "i2i"),
        "offers": ("u2i", "i2i", "catalog", "search", "other", "main"),
    }
    os_values: tuple[str, ...] = ("android", "ios", "other")
    # Subdomain null is expected on these actions (marketplace likes); elsewhere it is a defect.
    subdomain_null_actions: tuple[str, ...] = ("like",)
    workers: int = Field(2, gt=0)  # threads validating partitions when no Dask client is given


# --------------------------------------------------------------------------- cleaning
class CleaningConfig(Section):
    """Cleaning policy (TECD.md): sentinels, deduplication keys, drops; rules keyed by table.

    A rule keyed ``"items"`` applies to every ``items.<domain>`` table; an exact key
    (``"items.retail"``) wins over the family key.
    """

    int_sentinel: int = -1
    str_sentinel: str = "Unknown"
    impute_int: dict[str, tuple[str, ...]] = {
        "users": ("socdem_cluster", "region"),
        "items": ("brand_id",),
        "payments": ("brand_id",),
        "receipts": ("brand_id",),
        "reviews": ("brand_id",),
    }
    impute_str: dict[str, tuple[str, ...]] = {"items": ("category", "subcategory")}
    drop_missing_price: tuple[str, ...] = ("items.retail", "payments", "receipts")
    # Tables keeping rows without price: price := sentinel and a boolean flag column.
    price_sentinel_tables: tuple[str, ...] = ("items.marketplace", "items.offers")
    price_sentinel: float = 0.0
    price_flag_column: str = "price_missing"
    dedupe_keys: dict[str, tuple[str, ...]] = {
        "brands": ("brand_id",),
        "users": ("user_id",),
        "items": ("item_id",),
        "events": ("timestamp", "user_id", "item_id", "action_type"),
    }
    action_aliases: dict[str, str] = {"added-to-cart": "added_to_cart"}
    drop_events_unknown_items: bool = False
    subdomain_sentinel: str | None = None  # None: keep nulls (they mark likes)


class SuiteParams(QualityConfig):
    """What the suites read: the quality section, plus the cleaning policy the cleaned pass checks.

    Not a config section of its own: built by ``of`` from ``quality`` and ``cleaning``, so what
    cleaning does is set in one place and the suites check exactly that: the row keys
    (``cleaning.dedupe_keys``, checked for uniqueness), the sentinels it writes (accepted by the
    cleaned pass) and the action spellings it maps away (refused by the cleaned pass).
    """

    unique_keys: dict[str, tuple[str, ...]]
    int_sentinel: int
    subdomain_sentinels: tuple[str, ...]
    action_aliases: dict[str, str]

    @classmethod
    def of(cls, quality: QualityConfig, cleaning: "CleaningConfig") -> "SuiteParams":
        """Return the suites' parameters of a quality section and the cleaning policy it checks."""
        sentinel = () if cleaning.subdomain_sentinel is None else (cleaning.subdomain_sentinel,)
        return cls(**dict(quality), unique_keys=cleaning.dedupe_keys, int_sentinel=cleaning.int_sentinel,
                   subdomain_sentinels=sentinel, action_aliases=cleaning.action_aliases)

    def keys_for(self, table: str) -> tuple[str, ...] | None:
        """Return the key columns of ``table``: its own rule (``items.retail``), else its family's (``items``)."""
        return self.unique_keys.get(table, self.unique_keys.get(table.split(".")[0]))

    def actions_for(self, domain: str, stage: str) -> tuple[str, ...]:
        """Return the accepted action types of ``domain``; after cleaning, not the spellings it maps away."""
        actions = self.action_types[domain]
        return actions if stage == "raw" else tuple(a for a in actions if a not in self.action_aliases)
