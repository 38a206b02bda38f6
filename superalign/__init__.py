"""superalign: runnable, tested alignment research — weak-to-strong generalization, RLHF, automated
interpretability, scalable oversight and monitoring."""

__version__ = "0.1.0"
