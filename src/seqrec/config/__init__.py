"""Typed, frozen configuration: every default of seqrec lives in this package (``data.py``: the data side,
``learning.py``: features, models, training and evaluation; ``serving.py``: indexes and the endpoint; this file: the whole config and its loading).

A config is built from the defaults, then a YAML file, then dotted overrides
(``training.device=cpu``) from the CLI or Prefect flow parameters. Unknown keys are
an error naming the key; wrong types and impossible values are an error naming the
key and the value, raised before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from seqrec.config.base import ConfigError, Section
from seqrec.config.data import (CleaningConfig, DataConfig, DefectRates, GeneratorConfig, QualityConfig,
                                SuiteParams)
from seqrec.config.learning import (MODEL_NAMES, NEURAL_MODELS, BprMfConfig, EmbeddingConfig, EvaluationConfig,
                                    FeaturesConfig, GraphConfig, Gru4RecConfig, ItemKnnConfig, ModelName, ModelsConfig,
                                    NeuralModelConfig, ParamSpec, SasRecConfig, SessionConfig, SessionKnnConfig,
                                    TrainingConfig, TuningConfig)
from seqrec.config.serving import RegistryConfig, ServingConfig

__all__ = ["ConfigError", "Section", "SeqrecConfig", "OutputConfig", "CleaningConfig", "DataConfig", "DefectRates",
           "GeneratorConfig", "QualityConfig", "SuiteParams", "MODEL_NAMES", "NEURAL_MODELS", "BprMfConfig",
           "EmbeddingConfig", "EvaluationConfig", "FeaturesConfig", "GraphConfig", "Gru4RecConfig", "ItemKnnConfig",
           "ModelName", "ModelsConfig", "NeuralModelConfig", "SasRecConfig", "SessionConfig", "SessionKnnConfig",
           "ParamSpec", "RegistryConfig", "ServingConfig", "TrainingConfig", "TuningConfig", "build_config", "load_config", "parse_overrides", "config_to_dict"]




class OutputConfig(Section):
    """Where a run writes: ``<root>/<run_name>``."""

    root: Path = Path("outputs")
    run_name: str = "default"
    lock_wait_seconds: float = Field(0.0, ge=0)  # a run finding its run directory in use waits this long, then is refused

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
    tuning: TuningConfig = TuningConfig()
    serving: ServingConfig = ServingConfig()
    registry: RegistryConfig = RegistryConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _valid_metric(self) -> "SeqrecConfig":
        name, _, k = self.training.valid_metric.partition("@")
        if name not in ("recall", "hr", "mrr", "ndcg") or not k.isdigit() or int(k) not in self.evaluation.cutoffs:
            raise ValueError(f"training.valid_metric={self.training.valid_metric!r} must be <recall|hr|mrr|ndcg>@K "
                             f"with K in evaluation.cutoffs={list(self.evaluation.cutoffs)}")
        return self

    @model_validator(mode="after")
    def _warm_start_source(self) -> "SeqrecConfig":
        f = self.features
        for name in NEURAL_MODELS:
            if name in self.models.names and getattr(self.models, name).init_from_embeddings:
                for key, on in (("build_graph", f.build_graph), ("build_embeddings", f.build_embeddings)):
                    if not on:
                        raise ValueError(f"models.{name}.init_from_embeddings=true needs the item embeddings, "
                                         f"but features.{key}=false")
        return self


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
