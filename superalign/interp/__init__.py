"""Automated interpretability: activation caches, sparse autoencoders (TopK with the Gao et al. 2024 recipe; ReLU+L1
baseline) with FVU/L0/density and CE/KL loss recovered, and explain → simulate → score (Bills et al. 2023) over
neurons or SAE latents with local or OpenAI-compatible LLMs."""
