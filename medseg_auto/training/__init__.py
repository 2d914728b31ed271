"""Training: data pipeline, losses, trainers and the training loop."""
