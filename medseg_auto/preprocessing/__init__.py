"""Preprocessing: the one case pipeline (transpose, crop, normalize, resample) shared by
training-data preparation and prediction, and its inverse for exporting predictions."""
