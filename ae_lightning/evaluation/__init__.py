"""Evaluation: metrics, pictures, the feature classifier for Frechet distances, and the evaluation driver."""
