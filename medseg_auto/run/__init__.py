"""Run: one fold end to end, as ``medseg-auto train`` does it: train (the training stage), then
validate the trained network on the fold's validation cases (inference and evaluation). The
layer above both, as nnU-Net's ``run/`` is, so that training never imports the predictor."""
