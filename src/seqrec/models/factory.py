"""Build any model by name from its config section: the one place that maps names to classes."""

from __future__ import annotations

from pathlib import Path

from seqrec.config import MODEL_NAMES, NEURAL_MODELS, ModelsConfig, Section, TrainingConfig
from seqrec.models.base import Recommender

__all__ = ["MODEL_NAMES", "NEURAL_MODELS", "build_model", "model_section"]


def model_section(models: ModelsConfig, name: str) -> Section | None:
    """Return the config section of model ``name`` (None for the models without settings)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model '{name}'; choose one of {', '.join(MODEL_NAMES)}")
    return getattr(models, name, None)


def build_model(name: str, section: Section | None, training: TrainingConfig = TrainingConfig(),
                checkpoint_path: Path | str | None = None) -> Recommender:
    """Return an untrained model called ``name`` built from its config section (and the training settings)."""
    from seqrec.models import baselines as B

    simple = {"popularity": B.Popularity, "spop": B.SessionPopularity, "markov": B.Markov}
    if name in simple:
        return simple[name]()
    if name == "itemknn":
        return B.ItemKNN(section)
    if name == "sknn":
        return B.SessionKNN(section)
    if name == "bprmf":
        from seqrec.models.bprmf import BPRMF

        return BPRMF(section)
    if name == "gru4rec":
        from seqrec.models.gru4rec import GRU4Rec

        return GRU4Rec(section, training, checkpoint_path=checkpoint_path)
    if name == "sasrec":
        from seqrec.models.sasrec import SASRec

        return SASRec(section, training, checkpoint_path=checkpoint_path)
    raise ValueError(f"unknown model '{name}'; choose one of {', '.join(MODEL_NAMES)}")
