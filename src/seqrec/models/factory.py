"""Build any model by name from the config: the one place that maps names to classes."""

from __future__ import annotations

from seqrec.config import SeqrecConfig
from seqrec.models.base import Recommender

MODEL_NAMES = ("popularity", "spop", "markov", "itemknn", "sknn", "bprmf", "gru4rec", "sasrec")
NEURAL = ("gru4rec", "sasrec")


def build_model(name: str, cfg: SeqrecConfig, checkpoint_path=None) -> Recommender:
    """Return an untrained model called ``name`` built from its config section."""
    from seqrec.models import baselines as B

    m = cfg.models
    simple = {"popularity": B.Popularity, "spop": B.SessionPopularity, "markov": B.Markov}
    if name in simple:
        return simple[name]()
    if name == "itemknn":
        return B.ItemKNN(m.itemknn)
    if name == "sknn":
        return B.SessionKNN(m.sknn)
    if name == "bprmf":
        from seqrec.models.bprmf import BPRMF

        return BPRMF(m.bprmf)
    if name == "gru4rec":
        from seqrec.models.gru4rec import GRU4Rec

        return GRU4Rec(m.gru4rec, cfg.training, cfg.evaluation, checkpoint_path=checkpoint_path)
    if name == "sasrec":
        from seqrec.models.sasrec import SASRec

        return SASRec(m.sasrec, cfg.training, cfg.evaluation)
    raise ValueError(f"unknown model '{name}'; choose one of {', '.join(MODEL_NAMES)}")
