"""Settings of the learning side: features, models, training and evaluation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from seqrec.config.base import Section


# --------------------------------------------------------------------------- features
class SessionConfig(Section):
    """Sessionization: a new session after MORE than ``gap_minutes`` of inactivity (a gap of exactly
    ``gap_minutes`` continues the session), then optional support/length filters."""

    gap_minutes: float = Field(30.0, gt=0)
    min_session_length: int = Field(1, ge=1)  # events per session, counted after the support filter
    min_item_support: int = Field(1, ge=1)  # events per item over the whole table
    filter_mode: Literal["once", "fixed_point"] = "fixed_point"  # repeat support+length until stable
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
    build_embeddings: bool = True  # pipeline: train InfoNCE item embeddings on the graph (models.<name>.init_from_embeddings uses them)


# --------------------------------------------------------------------------- models
MODEL_NAMES = ("popularity", "spop", "markov", "itemknn", "sknn", "bprmf", "gru4rec", "sasrec")
NEURAL_MODELS = ("gru4rec", "sasrec")
ModelName = Literal[MODEL_NAMES]


class NeuralModelConfig(Section):
    """What GRU4Rec and SASRec share: warm starts and the repeat extensions (models/repeat.py)."""

    epochs: int = Field(10, gt=0)
    init_from_embeddings: bool = False  # start the item vectors from the pipeline's InfoNCE embeddings
    init_projection: Literal["project", "error"] = "project"  # warm start with other dims: PCA or error
    repeat_bias: bool = False  # extension, not in the papers: + learned beta(h) for items already in the session
    repeat_mixture: bool = False  # extension: repeat/explore mixture head over the session's items
    repeat_window: int = Field(200, gt=0)  # repeat_mixture: the last items of the session it attends to
    repeat_first: bool = False  # extension, scoring only: the session's items rank first


class Gru4RecConfig(NeuralModelConfig):
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

    @model_validator(mode="after")
    def _repeat_options(self) -> "Gru4RecConfig":
        check_repeat_options("gru4rec", self.repeat_bias, self.repeat_mixture, self.loss, bias_any_loss=True)
        if self.repeat_first and self.final_act != "linear":  # tanh / elu would flatten the lifted scores into ties
            raise ValueError(f"models.gru4rec.repeat_first=true needs final_act=linear (got final_act={self.final_act!r})")
        if self.repeat_mixture and (self.final_act != "linear" or not self.n_sample):
            raise ValueError(f"models.gru4rec.repeat_mixture=true needs final_act=linear and n_sample > 0 "
                             f"(got final_act={self.final_act!r}, n_sample={self.n_sample})")
        return self


class SasRecConfig(NeuralModelConfig):
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


class ModelsConfig(Section):
    """Which models the pipeline trains, and each one's settings."""

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
    init_from: Literal["scratch", "registry"] = "scratch"  # registry: retrain starts GRU4Rec / SASRec from the current version
    finetune_epochs: int = Field(1, gt=0)  # epochs of a warm-started retrain (no early stopping)
    full_retrain_every: int = Field(7, ge=0)  # nights: every Nth retrain starts from scratch (0: only the first)


# --------------------------------------------------------------------------- tuning
Choice = bool | int | float | str


class ParamSpec(Section):
    """One searched setting of ``models.<model>``: a float or int range (``log``: sampled on a log scale; ``step``:
    a grid step) or a list of ``choices``. ``type`` defaults to ``choice`` with choices, else ``float``."""

    type: Literal["float", "int", "choice"] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: tuple[Choice, ...] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "ParamSpec":
        kind = self.type or ("choice" if self.choices is not None else "float")
        if kind == "choice":
            if not self.choices or self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("a choice needs a non-empty 'choices' list and no low/high/log/step")
        else:
            if self.choices is not None or self.low is None or self.high is None:
                raise ValueError(f"a {kind} range needs 'low' and 'high' (and no 'choices')")
            if not self.low < self.high:
                raise ValueError(f"low={self.low} must be below high={self.high}")
            if self.log and (self.low <= 0 or self.step is not None):
                raise ValueError(f"a log range needs low > 0 (got {self.low}) and no step")
            if kind == "int" and (self.low != int(self.low) or self.high != int(self.high)
                                  or (self.step is not None and self.step != int(self.step))):
                raise ValueError(f"an int range needs whole low, high and step (got {self.low}, {self.high}, {self.step})")
        object.__setattr__(self, "type", kind)
        return self


class TuningConfig(Section):
    """Hyperparameter search (``seqrec tune``, the tune flow): Optuna over ``models.<model>``'s settings, each trial
    trained on ``train`` and scored on ``valid`` by ``training.valid_metric``; test data only for the best, once."""

    space: dict[str, ParamSpec] = {}  # empty: the model's default space (seqrec/models/spaces/<model>.yaml)
    trials: int = Field(20, gt=0)  # the trial budget: finished and pruned trials, stored ones of a resumed study included
    timeout_minutes: float = Field(0.0, ge=0)  # wall-clock budget of one call (no new trial starts after it); 0: none
    parallel: int = Field(1, gt=0)  # trials at once: Dask worker processes (data.dask_address, or a local process cluster)
    sampler: Literal["tpe", "random"] = "tpe"
    startup_trials: int = Field(5, ge=0)  # random trials before TPE models the space; the median pruner waits for as many
    pruner: Literal["median", "halving", "none"] = "median"  # halving: successive halving, rungs of epochs
    warmup_epochs: int = Field(1, ge=0)  # median: epochs a trial always trains before it can be pruned
    storage: str = ""  # database URL; "": sqlite:///<run dir>/tune/<model>/study.db (resumable)
    study_name: str = ""  # "": the model's name
    seed: int = 0  # the sampler's seed
    retrain_best: bool = True  # retrain the best trial on train + valid and evaluate it on test (once)


# --------------------------------------------------------------------------- evaluation
class EvaluationConfig(Section):
    """The evaluation protocol: split, cut-offs, tie handling and candidate set, named in every report."""

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
    index: Literal["exact", "ann"] = "exact"  # ann: dot-product models ranked through their serving index (serving.*)

    @model_validator(mode="after")
    def _cutoffs(self) -> "EvaluationConfig":
        if not self.cutoffs or any(k <= 0 for k in self.cutoffs):
            raise ValueError(f"evaluation.cutoffs={self.cutoffs} must be positive integers")
        return self
