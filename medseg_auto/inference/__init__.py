"""Prediction: sliding-window inference with mirroring, fold ensembles, export to the input's
geometry through the inverse of the shared preprocessing pipeline."""
