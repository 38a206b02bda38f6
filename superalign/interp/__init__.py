"""Automated interpretability: TopK sparse autoencoders (Gao et al. 2024); explain → simulate → score to come."""
