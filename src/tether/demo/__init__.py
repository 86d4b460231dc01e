"""The on-call demo: an SRE agent working through a batch of incidents on the simulated model."""
