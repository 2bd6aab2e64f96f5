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
    # Not in TECD.md's table, but described there: "most [brand] embeddings missing"; item
    # brand_id is nullable [3rd].
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
    on_bad_partition: Literal["fail", "skip"] = "fail"  # skip = quarantine and report
    embeddings: Literal["exclude", "repair"] = "exclude"
    embedding_dim: int | None = Field(None, gt=0)  # repair: pad/truncate to this; None = modal length
    read_retries: int = Field(3, ge=0)  # retries of a transient OSError per partition, then it is bad
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
    unique_keys: dict[str, tuple[str, ...]] = {
        "users": ("user_id",),
        "brands": ("brand_id",),
        "items": ("item_id",),
        "events": ("timestamp", "user_id", "item_id", "action_type"),
    }
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
    # Values the cleaning step may write, accepted by the cleaned pass.
    subdomain_sentinels: tuple[str, ...] = ("unknown",)
    int_sentinel: int = -1
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


# --------------------------------------------------------------------------- features
class SessionConfig(Section):
    """Sessionization: a new session after MORE than ``gap_minutes`` of inactivity (a gap of exactly
    ``gap_minutes`` continues the session), then optional support/length filters."""

    gap_minutes: float = Field(30.0, gt=0)
    min_session_length: int = Field(1, ge=1)  # events per session, counted after the support filter
    min_item_support: int = Field(1, ge=1)  # events per item over the whole table
    filter_mode: Literal["once", "fixed_point"] = "fixed_point"  # repeat support+length until stable
    workers: int = Field(1, gt=0)  # threads sessionizing day partitions in parallel (in-memory API)
    bucket_events: int = Field(4_000_000, gt=0)  # rows per user bucket of the out-of-core stage (its memory bound)


class GraphConfig(Section):
    """Item co-occurrence graph (seqrec.features.graph): co-view pairs in sessions + co-purchase pairs in baskets."""

    coview: Literal["all", "window"] = "window"
    window: int = Field(5, gt=0)
    distance_weighting: bool = False
    max_basket: int = Field(50, gt=0)  # receipts with more items are noise
    copurchase_weight: float = Field(1.0, ge=0)
    min_count: int = Field(1, ge=1)  # raw co-occurrences (co-view pairs + baskets) an edge needs
    buckets: int = Field(16, gt=0)  # hash partitions for out-of-core aggregation
    chunk_events: int = Field(1_000_000, gt=0)  # session events per pair-counting chunk


class EmbeddingConfig(Section):
    """Contrastive item embeddings (seqrec.features.embeddings); defaults are the study's (TECD.md)."""

    dim: int = Field(128, gt=0)
    hidden: int = Field(256, gt=0)
    temperature: float = Field(0.1, gt=0)
    batch_size: int = Field(8192, gt=0)
    lr: float = Field(1e-3, gt=0)
    epochs: int = Field(5, gt=0)
    seed: int = 0
    sampling: Literal["weighted", "all"] = "weighted"  # pairs drawn ∝ edge weight, or every edge once
    steps_per_epoch: int = Field(0, ge=0)  # 0: 2 * edges / batch_size (both directions once)
    plateau_factor: float = Field(0.5, gt=0, lt=1)  # ReduceLROnPlateau on the epoch's mean loss
    plateau_patience: int = Field(1, ge=0)
    output: Literal["projection", "embedding"] = "projection"  # which vectors are returned
    amp: bool = True  # mixed precision, CUDA only


class FeaturesConfig(Section):
    """Sessions, item graph and item embeddings."""

    sessions: SessionConfig = SessionConfig()
    graph: GraphConfig = GraphConfig()
    embeddings: EmbeddingConfig = EmbeddingConfig()
    build_graph: bool = True  # pipeline: build the co-occurrence graph
    build_embeddings: bool = True  # pipeline: train InfoNCE item embeddings on the graph
    warm_start: bool = False  # pipeline: initialise GRU4Rec/SASRec item embeddings from them


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
    init_projection: Literal["project", "error"] = "project"  # warm start with other dims: PCA or error
    repeat_bias: bool = False  # extension, not in the papers: + learned beta(h) for items already in the session
    repeat_mixture: bool = False  # extension: repeat/explore mixture head over the session's items (models/repeat.py)
    repeat_window: int = Field(200, gt=0)  # repeat_mixture: the last items of the session it attends to
    repeat_first: bool = False  # extension, scoring only: the session's items rank first (models/repeat.py)

    @model_validator(mode="after")
    def _repeat_options(self) -> "Gru4RecConfig":
        check_repeat_options("gru4rec", self.repeat_bias, self.repeat_mixture, self.loss, bias_any_loss=True)
        if self.repeat_first and self.final_act != "linear":  # tanh / elu would flatten the lifted scores into ties
            raise ValueError(f"models.gru4rec.repeat_first=true needs final_act=linear (got final_act={self.final_act!r})")
        if self.repeat_mixture and (self.final_act != "linear" or not self.n_sample):
            raise ValueError(f"models.gru4rec.repeat_mixture=true needs final_act=linear and n_sample > 0 "
                             f"(got final_act={self.final_act!r}, n_sample={self.n_sample})")
        return self


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
    n_negatives: int = Field(256, gt=0)  # sampled-softmax only: negatives shared by the batch
    negatives: Literal["uniform", "popularity"] = "popularity"  # sampled-softmax, with logQ correction
    # Sequences longer than max_len + 1: "last" trains on the last max_len + 1 items (the paper);
    # "slide" cuts them into windows so that every transition is trained on once.
    long_sequences: Literal["last", "slide"] = "last"
    batch_size: int = Field(128, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    epochs: int = Field(30, gt=0)
    init_from_embeddings: bool = False
    init_projection: Literal["project", "error"] = "project"  # warm start with other dims: PCA or error
    repeat_bias: bool = False  # extension, not in the paper: + learned beta(h) for items already in the sequence
    repeat_mixture: bool = False  # extension: repeat/explore mixture head over the sequence's items (models/repeat.py)
    repeat_window: int = Field(200, gt=0)  # repeat_mixture: the last items it attends to (recency learned up to max_len)
    repeat_first: bool = False  # extension, scoring only: the sequence's items rank first (models/repeat.py)

    @model_validator(mode="after")
    def _heads_divide(self) -> "SasRecConfig":
        if self.dim % self.heads:
            raise ValueError(f"models.sasrec.dim={self.dim} is not divisible by heads={self.heads}")
        check_repeat_options("sasrec", self.repeat_bias, self.repeat_mixture, self.loss)
        return self


def check_repeat_options(model: str, bias: bool, mixture: bool, loss: str, bias_any_loss: bool = False) -> None:
    """Raise unless at most one repeat term is on, each with a loss it can train with (the mixture: cross-entropy)."""
    if bias and mixture:
        raise ValueError(f"models.{model}: repeat_bias and repeat_mixture are alternatives; set one of them")
    for key, on in (("repeat_bias", bias and not bias_any_loss), ("repeat_mixture", mixture)):
        if on and loss != "cross-entropy":
            raise ValueError(f"models.{model}.{key}=true needs loss=cross-entropy, not {loss!r}")


class ItemKnnConfig(Section):
    """Item-KNN: c_ij / (s_i^alpha s_j^(1-alpha) + shrinkage), sessions as item vectors."""

    neighbours: int = Field(100, gt=0)
    shrinkage: float = Field(20.0, ge=0)  # lambda
    alpha: float = Field(0.5, ge=0, le=1)  # asymmetric cosine; 0.5 = cosine


class SessionKnnConfig(Section):
    """Session-KNN: cosine neighbours among the ``sample`` most recent sessions sharing an item."""

    neighbours: int = Field(100, gt=0)
    sample: int = Field(1000, gt=0)


class BprMfConfig(Section):
    """BPR-MF; sessions are users in training, averaged item factors at scoring (GRU4Rec paper)."""

    factors: int = Field(64, gt=0)
    optimizer: Literal["adagrad", "adam"] = "adagrad"  # adam = torch SparseAdam
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

    @model_validator(mode="after")
    def _valid_metric(self) -> "SeqrecConfig":
        name, _, k = self.training.valid_metric.partition("@")
        if name not in ("recall", "hr", "mrr", "ndcg") or not k.isdigit() or int(k) not in self.evaluation.cutoffs:
            raise ValueError(f"training.valid_metric={self.training.valid_metric!r} must be <recall|hr|mrr|ndcg>@K "
                             f"with K in evaluation.cutoffs={list(self.evaluation.cutoffs)}")
        return self


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
