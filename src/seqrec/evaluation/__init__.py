"""Evaluation: splits by protocol, full-ranking metrics with breakdowns, the model comparison report."""
