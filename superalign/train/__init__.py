"""Losses, metrics and the training loop shared by every pillar."""
