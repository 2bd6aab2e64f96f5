"""Typed, frozen configuration: every default of seqrec lives in this file.

A config is built from the defaults, then a YAML file, then dotted overrides
(``training.device=cpu``) from the CLI or Prefect flow parameters. Unknown keys are
an error naming the key; wrong types and impossible values are an error naming the
key and the value, raised before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PositiveInt = Field(gt=0)


class Section(BaseModel):
    """Base of every config section: frozen, and unknown keys are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


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
    events_per_user: float = Field(12.0, gt=0)  # mean events per user over the whole range
    events_per_item: float = Field(25.0, gt=0)  # sets catalogue size from the scale
    intents: int = Field(50, gt=0)  # latent item groups the sessions are drawn from
    zipf_exponent: float = Field(1.05, gt=0)
    item_embedding_dim: int = Field(300, gt=0)
    brand_embedding_dim: int = Field(300, gt=0)
    review_embedding_dim: int = Field(312, gt=0)
    workers: int = Field(2, gt=0)  # processes writing day partitions in parallel
    defects: DefectRates = DefectRates()


# --------------------------------------------------------------------------- data
class DataConfig(Section):
    """Where the raw data is and how it is loaded."""

    root: Path | None = None  # None: generate into <output.root>/data
    domains: tuple[Literal["marketplace", "retail", "offers"], ...] = ("marketplace",)
    first_day: int | None = None
    last_day: int | None = None
    on_bad_partition: Literal["fail", "skip"] = "fail"  # skip = quarantine and report
    embeddings: Literal["exclude", "repair"] = "exclude"
    read_retries: int = Field(3, ge=0)
    dask_address: str | None = None  # e.g. "tcp://127.0.0.1:8786"; None = local cluster
    dask_workers: int = Field(2, gt=0)
    dask_processes: bool = False

    @model_validator(mode="after")
    def _day_range(self) -> "DataConfig":
        if self.first_day is not None and self.last_day is not None and self.first_day > self.last_day:
            raise ValueError(f"data.first_day={self.first_day} is after data.last_day={self.last_day}")
        return self


# --------------------------------------------------------------------------- quality
class QualityConfig(Section):
    """Great Expectations thresholds (``mostly`` = share of rows that must pass)."""

    on_cleaned_failure: Literal["fail", "warn"] = "fail"
    build_data_docs: bool = True
    # Raw-pass thresholds: defaults sit just above TECD.md's rates so real data passes
    # and anything worse is a finding.
    mostly: dict[str, float] = {
        "users.socdem_cluster": 0.998,
        "users.region": 0.98,
        "items.retail.price": 0.99,
        "items.retail.category": 0.99,
        "items.marketplace.price": 0.999,
        "items.marketplace.category": 0.99,
        "items.marketplace.subcategory": 0.99,
        "payments.brand_id": 0.99,
        "payments.price": 0.9999,
        "receipts.brand_id": 0.99,
        "receipts.price": 0.999,
        "events.marketplace.subdomain": 0.999,
    }
    price_range: tuple[float, float] = (-50.0, 50.0)
    min_receipt_linkage: float = Field(0.5, ge=0, le=1)
    min_rows: int = Field(1, ge=0)


# --------------------------------------------------------------------------- cleaning
class CleaningConfig(Section):
    """Cleaning policy (TECD.md): sentinels, deduplication keys, drops."""

    int_sentinel: int = -1
    str_sentinel: str = "Unknown"
    impute_int: tuple[str, ...] = ("socdem_cluster", "region", "brand_id")
    impute_str: tuple[str, ...] = ("category", "subcategory")
    drop_missing_price: tuple[str, ...] = ("items.retail", "payments", "receipts")
    price_sentinel: float = 0.0  # marketplace items keep rows without price
    dedupe_keys: dict[str, tuple[str, ...]] = {
        "brands": ("brand_id",),
        "users": ("user_id",),
        "items": ("item_id",),
        "events": ("timestamp", "user_id", "item_id", "action_type"),
    }
    drop_events_unknown_items: bool = False
    subdomain_sentinel: str = "unknown"


# --------------------------------------------------------------------------- features
class SessionConfig(Section):
    gap_minutes: float = Field(30.0, gt=0)
    min_session_length: int = Field(1, ge=1)
    min_item_support: int = Field(1, ge=1)


class GraphConfig(Section):
    coview: Literal["all", "window"] = "window"
    window: int = Field(5, gt=0)
    distance_weighting: bool = False
    max_basket: int = Field(50, gt=0)  # receipts with more items are noise
    copurchase_weight: float = Field(1.0, ge=0)
    min_count: int = Field(1, ge=1)
    buckets: int = Field(16, gt=0)  # hash partitions for out-of-core aggregation


class EmbeddingConfig(Section):
    dim: int = Field(128, gt=0)
    hidden: int = Field(256, gt=0)
    temperature: float = Field(0.1, gt=0)
    batch_size: int = Field(8192, gt=0)
    lr: float = Field(1e-3, gt=0)
    epochs: int = Field(5, gt=0)
    seed: int = 0


class FeaturesConfig(Section):
    sessions: SessionConfig = SessionConfig()
    graph: GraphConfig = GraphConfig()
    embeddings: EmbeddingConfig = EmbeddingConfig()


# --------------------------------------------------------------------------- models
class Gru4RecConfig(Section):
    """GRU4Rec (Hidasi et al. 2016, Hidasi & Karatzoglou 2018); defaults: RSC15 settings."""

    loss: Literal["cross-entropy", "bpr-max", "top1-max", "bpr", "top1"] = "cross-entropy"
    final_act: Literal["linear", "elu", "tanh"] = "linear"
    elu_param: float = Field(1.0, ge=0)
    hidden: int = Field(100, gt=0)
    layers: int = Field(1, gt=0)
    batch_size: int = Field(32, gt=0)
    n_sample: int = Field(2048, ge=0)
    sample_alpha: float = Field(0.5, ge=0)
    sample_store: int = Field(10_000_000, ge=0)
    logq: float = Field(1.0, ge=0)
    bpreg: float = Field(0.0, ge=0)
    dropout_emb: float = Field(0.0, ge=0, lt=1)
    dropout_hidden: float = Field(0.4, ge=0, lt=1)
    embedding: Literal["onehot", "separate", "constrained"] = "constrained"
    embedding_dim: int = Field(0, ge=0)  # separate mode; 0 = hidden size
    optimizer: Literal["adagrad", "adamw"] = "adagrad"
    lr: float = Field(0.2, gt=0)
    momentum: float = Field(0.2, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    epochs: int = Field(10, gt=0)
    init_from_embeddings: bool = False


class SasRecConfig(Section):
    """SASRec (Kang & McAuley 2018) trained with full cross-entropy by default (SASRec+)."""

    blocks: int = Field(2, gt=0)
    heads: int = Field(2, gt=0)
    dim: int = Field(64, gt=0)
    ffn: int = Field(128, gt=0)
    max_len: int = Field(50, gt=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    norm: Literal["pre", "post"] = "pre"
    tied: bool = True
    loss: Literal["cross-entropy", "sampled-softmax", "bce"] = "cross-entropy"
    n_negatives: int = Field(256, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    epochs: int = Field(30, gt=0)
    init_from_embeddings: bool = False

    @model_validator(mode="after")
    def _heads_divide(self) -> "SasRecConfig":
        if self.dim % self.heads:
            raise ValueError(f"models.sasrec.dim={self.dim} is not divisible by heads={self.heads}")
        return self


class ItemKnnConfig(Section):
    neighbours: int = Field(100, gt=0)
    shrinkage: float = Field(20.0, ge=0)  # lambda
    alpha: float = Field(0.5, ge=0, le=1)  # asymmetric cosine; 0.5 = cosine


class SessionKnnConfig(Section):
    neighbours: int = Field(100, gt=0)
    sample: int = Field(1000, gt=0)


class BprMfConfig(Section):
    factors: int = Field(64, gt=0)
    lr: float = Field(0.05, gt=0)
    reg: float = Field(1e-4, ge=0)
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(4096, gt=0)
    seed: int = 0


ModelName = Literal["popularity", "spop", "markov", "itemknn", "sknn", "bprmf", "gru4rec", "sasrec"]


class ModelsConfig(Section):
    names: tuple[ModelName, ...] = ("popularity", "markov", "itemknn", "gru4rec")
    gru4rec: Gru4RecConfig = Gru4RecConfig()
    sasrec: SasRecConfig = SasRecConfig()
    itemknn: ItemKnnConfig = ItemKnnConfig()
    sknn: SessionKnnConfig = SessionKnnConfig()
    bprmf: BprMfConfig = BprMfConfig()


class TrainingConfig(Section):
    """Shared training machinery for neural models."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # mixed precision on CUDA only
    seed: int = 0
    patience: int = Field(3, ge=0)  # epochs without validation improvement; 0 = no early stop
    valid_metric: str = "recall@20"
    threads: int = Field(0, ge=0)  # torch CPU threads; 0 = torch default
    checkpoint_every_steps: int = Field(2000, gt=0)
    progress: bool = True


# --------------------------------------------------------------------------- evaluation
class EvaluationConfig(Section):
    protocol: Literal["session", "loo"] = "session"
    cutoffs: tuple[int, ...] = (1, 5, 10, 20)
    ties: Literal["conservative", "optimistic", "average"] = "conservative"
    candidates: Literal["full", "sampled"] = "full"
    n_negatives: int = Field(100, gt=0)  # sampled mode only (paper comparisons)
    test_days: float = Field(1.0, gt=0)  # session protocol: sessions ending in the last N days
    valid_days: float = Field(1.0, gt=0)  # taken from the end of the training part
    exclude_seen: bool = False
    batch_size: int = Field(512, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _cutoffs(self) -> "EvaluationConfig":
        if not self.cutoffs or any(k <= 0 for k in self.cutoffs):
            raise ValueError(f"evaluation.cutoffs={self.cutoffs} must be positive integers")
        return self


class OutputConfig(Section):
    root: Path = Path("outputs")
    run_name: str = "default"

    @property
    def run_dir(self) -> Path:
        """Directory holding this run's data, models and reports."""
        return self.root / self.run_name


class SeqrecConfig(Section):
    """The whole configuration of a seqrec run."""

    generator: GeneratorConfig = GeneratorConfig()
    data: DataConfig = DataConfig()
    quality: QualityConfig = QualityConfig()
    cleaning: CleaningConfig = CleaningConfig()
    features: FeaturesConfig = FeaturesConfig()
    models: ModelsConfig = ModelsConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    output: OutputConfig = OutputConfig()


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names both."""


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating levels as needed."""
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{dotted}': '{key}' is not a section")
    node[leaf] = value


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a nested dict from ``key.path=value`` strings (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override '{pair}' is not of the form key.path=value")
        key, raw = pair.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively with ``extra``."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(err: ValidationError) -> str:
    """Return one line per problem naming the dotted key and the offending value."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'")
        else:
            lines.append(f"config key '{key}' = {e.get('input')!r}: {e['msg']}")
    return "; ".join(lines)


def build_config(*layers: dict[str, Any]) -> SeqrecConfig:
    """Return a validated config from the defaults updated by each layer in turn."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, layer or {})
    try:
        return SeqrecConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def load_config(path: Path | str | None = None, overrides: list[str] | dict[str, Any] | None = None) -> SeqrecConfig:
    """Return the config from defaults, an optional YAML file, then overrides."""
    file_layer: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        file_layer = yaml.safe_load(path.read_text()) or {}
        if not isinstance(file_layer, dict):
            raise ConfigError(f"config file {path} must hold a mapping, got {type(file_layer).__name__}")
    extra = parse_overrides(overrides) if isinstance(overrides, (list, tuple)) else (overrides or {})
    return build_config(file_layer, extra)


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """Return a JSON-safe dict of a config (paths as strings, tuples as lists)."""
    return cfg.model_dump(mode="json")
