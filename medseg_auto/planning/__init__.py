"""Experiment planning: dataset fingerprint -> plans (spacing, normalization, patch, network, batch)."""
