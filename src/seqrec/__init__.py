"""seqrec: raw e-commerce event logs to trained next-item recommenders."""

__version__ = "0.1.0"
