"""Preprocessing: the one case pipeline (transpose, crop, normalize, resample) shared by
training-data preparation and prediction, and its inverse for exporting predictions. The array
operations themselves live in :mod:`medseg_auto.imaging`, where planning uses them too."""
