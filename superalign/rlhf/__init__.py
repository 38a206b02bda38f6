"""RLHF: SFT, reward models, PPO (InstructGPT), DPO, best-of-n and reward over-optimization studies."""
