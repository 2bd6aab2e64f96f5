"""Recommendation models: baselines and neural sequence models, one file each."""
