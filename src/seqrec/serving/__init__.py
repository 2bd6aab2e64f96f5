"""Serving: recommendations (exact top-k), the model registry, the live dashboard."""
